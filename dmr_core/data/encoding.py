"""How a set's image files were encoded, and the same encoding applied to other images.

A lossy encoding leaves a fingerprint (JPEG's 8×8 block artefacts, its quantised chroma) that a detector can learn
to see. When the ID images carry one and the OOD images do not, "has JPEG artefacts" separates them without any
semantics; passing every other image the detector sees (the OOD test sets, the synthesised training outliers)
through the ID data's own encoding removes that cue. The encoding is read off the ID files themselves: their
quantisation tables and chroma subsampling, re-used byte for byte, so nothing is assumed about the encoder."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

# PIL's chroma subsampling codes, as its JPEG writer takes them
SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
# The name of an OOD set evaluated as stored, beside the same set passed through the ID data's encoding
AS_STORED_SUFFIX = ".as_stored"
# A set counts as JPEG-encoded when at least this share of its files is JPEG; below it, no encoding is matched.
MAJORITY = 0.5


@dataclass(frozen=True)
class JpegEncoding:
    """A JPEG encoding: its quantisation tables (PIL's layout), chroma subsampling and the IJG quality whose tables
    they are (None for tables no IJG quality makes, e.g. a camera's own)."""

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int
    quality: int | None

    def describe(self) -> str:
        quality = f"quality {self.quality}" if self.quality is not None else "custom quantisation tables"
        return f"JPEG {quality}, {SUBSAMPLING_NAMES.get(self.subsampling, self.subsampling)}"

    def as_dict(self) -> dict:
        return {"format": "jpeg", "quality": self.quality,
                "subsampling": SUBSAMPLING_NAMES.get(self.subsampling, str(self.subsampling)),
                "qtables": [list(t) for t in self.qtables]}

    @classmethod
    def from_dict(cls, values: dict) -> JpegEncoding:
        codes = {name: code for code, name in SUBSAMPLING_NAMES.items()}
        return cls(tuple(tuple(int(v) for v in t) for t in values["qtables"]),
                   codes.get(values["subsampling"], 2), values.get("quality"))

    @classmethod
    def of_quality(cls, quality: int, subsampling: int = 2) -> JpegEncoding:
        """The tables PIL's (libjpeg's) writer uses at an IJG ``quality``."""
        return cls(ijg_tables(quality), subsampling, quality)


def _tables_of(image: Image.Image) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in image.quantization[key]) for key in sorted(image.quantization))


@lru_cache(maxsize=None)
def ijg_tables(quality: int) -> tuple[tuple[int, ...], ...]:
    """The quantisation tables of the IJG quality scale (libjpeg's, which PIL writes), read off an encoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as image:
        return _tables_of(image)


@lru_cache(maxsize=4096)
def ijg_quality(qtables: tuple[tuple[int, ...], ...]) -> int | None:
    """The IJG quality (1–100) whose tables are exactly ``qtables``, or None."""
    return next((q for q in range(1, 101) if ijg_tables(q) == qtables), None)


def jpeg_encoding_of(payload: bytes) -> JpegEncoding | None:
    """The encoding of one image file: a :class:`JpegEncoding` for a JPEG, None for anything else. Reads only the
    header (tables and sampling factors), no pixels."""
    if not payload.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.format != "JPEG" or not getattr(image, "quantization", None):
                return None
            qtables = _tables_of(image)
            subsampling = JpegImagePlugin.get_sampling(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    # a grayscale JPEG has one table and no chroma: matched as 4:4:4 with its one table for every channel
    return JpegEncoding(qtables, max(subsampling, 0), ijg_quality(qtables))


def dominant_encoding(counts: Counter) -> tuple[JpegEncoding | None, float]:
    """(the encoding most files of a set share, the share of files that have it); None when JPEG files are not
    a majority. ``counts`` counts :func:`jpeg_encoding_of` over the set's files (None for a non-JPEG file)."""
    total = sum(counts.values())
    jpeg = [(n, encoding) for encoding, n in counts.items() if encoding is not None]
    if not total or sum(n for n, _ in jpeg) < MAJORITY * total:
        return None, 0.0
    n, encoding = max(jpeg, key=lambda item: (item[0], item[1].quality or 0))
    return encoding, n / total


def jpeg_round_trip(images: np.ndarray, encoding: JpegEncoding) -> np.ndarray:
    """Each uint8 H×W×3 image encoded with ``encoding`` (its tables and subsampling) and decoded again."""
    out = np.empty_like(images)
    qtables = [list(t) for t in encoding.qtables]
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", qtables=qtables, subsampling=encoding.subsampling)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    return out


def resolve_encoding(setting: str, id_encoding: JpegEncoding | None, quality: int = 75) -> JpegEncoding | None:
    """The encoding a setting asks for: ``auto`` / ``match_id`` = the ID data's own (None if its files are not
    JPEG), ``none`` = none, ``jpeg`` = JPEG at IJG ``quality`` with the ID data's subsampling (4:2:0 if unknown)."""
    if setting in ("auto", "match_id"):
        return id_encoding
    if setting == "none":
        return None
    if setting == "jpeg":
        return JpegEncoding.of_quality(quality, id_encoding.subsampling if id_encoding is not None else 2)
    raise ValueError(f"unknown encoding setting {setting!r}")


def describe_encoding(encoding: JpegEncoding | None) -> str:
    return encoding.describe() if encoding is not None else "none"


def as_stored_name(name: str) -> str:
    return name + AS_STORED_SUFFIX


def is_as_stored(name: str) -> bool:
    return name.endswith(AS_STORED_SUFFIX)


def stored_encoding(attrs: dict) -> JpegEncoding | None:
    """The encoding of a set's files as the data stage recorded it in the set's attributes (None: not JPEG)."""
    values = attrs.get("encoding")
    return JpegEncoding.from_dict(values) if values else None


def encode_like(images: np.ndarray, encoding: JpegEncoding | None) -> np.ndarray:
    """``images`` passed through ``encoding``, or as they are when there is none."""
    return images if encoding is None else jpeg_round_trip(images, encoding)
