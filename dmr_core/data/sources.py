"""Image files in a tar archive or a folder: listing them safely, reading them, decoding them to RGB uint8 at the
pipeline's image size.

An archive is read member by member in memory and never extracted; a folder is walked without following links out
of it. Members and images too large to be real are skipped unread, so a crafted archive costs no memory.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
# The size every network of the pipeline is built for (the CIFAR classifiers and the generators).
IMAGE_SIZE = 32
# Archive bombs: a member is read into memory whole and an image decoded whole, so both are capped before either
# happens. The real members are a few KB (the largest is 5 KB); the caps sit far above any real image (an
# uncompressed 4K UHD RGBA bitmap is 33 MB and 8.3 M pixels) and far below what could hurt the machine (a decoded
# RGB image at the pixel cap is 50 MB).
MAX_MEMBER_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Entry:
    """One image file of a source: its path relative to the source's root (POSIX form), its size, and where to read
    it (a tar member or a file)."""

    path: PurePosixPath
    size: int
    handle: tarfile.TarInfo | Path


@dataclass
class Listing:
    """The image files of a source and what was passed over while listing (``not_an_image``, ``too_large``)."""

    entries: list[Entry]
    skipped: Counter


def is_archive(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".tar"


def member_path_problem(name: str) -> str | None:
    """Why a tar member's name may not be read (an absolute or '..' path, which points outside the archive), else
    None: the one rule of the data stage (which refuses the archive) and of ``dmr score`` (which skips the member)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return f"member {name!r} has an absolute or '..' path"
    return None


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    problem = member_path_problem(member.name)
    if problem is not None:
        raise DataError(f"{archive}: {problem}; refusing to read this archive")
    return PurePosixPath(member.name)


def _list_archive(archive: Path, prefix: PurePosixPath) -> Listing:
    entries: list[Entry] = []
    skipped: Counter[str] = Counter()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                path = _safe_member_path(member, archive)
                if not member.isfile() or path.parts[: len(prefix.parts)] != prefix.parts:
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped["not_an_image"] += 1
                elif member.size > MAX_MEMBER_BYTES:
                    skipped["too_large"] += 1
                else:
                    entries.append(Entry(path, member.size, member))
            end_of_members = tar.offset
        # A complete tar ends with two zero blocks; without them it was cut at a member boundary.
        if archive.stat().st_size < end_of_members + 2 * tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"archive ends after {end_of_members} bytes without its end-of-archive marker")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive} is truncated or not a tar archive ({err}); download or copy it again") from None
    return Listing(entries, skipped)


def _list_folder(root: Path, prefix: PurePosixPath) -> Listing:
    entries: list[Entry] = []
    skipped: Counter[str] = Counter()
    start = root.joinpath(*prefix.parts)
    if not start.is_dir():
        return Listing(entries, skipped)
    for folder, subfolders, files in os.walk(start):  # links to folders are not followed (os.walk's default)
        subfolders.sort()
        for name in sorted(files):
            file = Path(folder, name)
            if name.startswith(".") or not file.is_file():  # hidden files (.DS_Store, ._x.jpg) are no images
                continue
            relative = PurePosixPath(file.relative_to(root).as_posix())
            size = file.stat().st_size
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped["not_an_image"] += 1
            elif size > MAX_MEMBER_BYTES:
                skipped["too_large"] += 1
            else:
                entries.append(Entry(relative, size, file))
    return Listing(entries, skipped)


def list_images(source: Path, prefix: PurePosixPath = PurePosixPath()) -> Listing:
    """The image files under ``prefix`` of a tar archive or a folder (files are recognised by their suffix)."""
    if is_archive(source):
        return _list_archive(source, prefix)
    if source.is_dir():
        return _list_folder(source, prefix)
    raise DataError(f"{source} not found, or neither a folder nor a .tar archive")


def read_payloads(source: Path, entries: list[Entry]) -> Iterator[tuple[Entry, bytes | None]]:
    """(entry, its bytes) for each entry in order; None for a member or file that cannot be read."""
    if is_archive(source):
        try:
            with tarfile.open(source, mode="r:") as tar:
                for entry in entries:
                    handle = tar.extractfile(entry.handle)
                    yield entry, None if handle is None else handle.read()
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"{source} is truncated or corrupt ({err}); download or copy it again") from None
        return
    for entry in entries:
        try:
            yield entry, entry.handle.read_bytes()
        except OSError:
            yield entry, None


def _open_header(payload: bytes) -> Image.Image | str:
    """The opened image (only its header is read yet), or why it cannot be used: ``too_large`` / ``undecodable``.

    PIL's own bomb check fires inside ``Image.open`` (a warning above its global ``Image.MAX_IMAGE_PIXELS``, an
    error above twice that); both mean ``too_large`` here, and the global is left alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(payload))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too_large"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "undecodable"


class OutOfRangeImage(ValueError):
    """An image whose pixel values its mode does not define as intensities (a float image outside [0, 1], an
    integer one outside 0–65535, a non-finite value)."""


# PIL modes that hold one 16-bit unsigned channel, and those that hold transparency
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")


def to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, each mode by what its values mean:

    - 16-bit channels (``I;16*``, and ``I``, which holds 16-bit PNG / PGM / TIFF data) scaled by their depth,
      v · 255 / 65535 rounded (PIL's own ``convert`` clips them to 255, turning a 16-bit image nearly white);
    - float images (``F``) read as intensities in [0, 1] (PIL's ``convert`` truncates them to 0, black);
    - transparency (RGBA, LA, PA, a palette or grey image with a transparent colour) composited onto black,
      i.e. premultiplied, because the colour stored under a transparent pixel is undefined and may be anything
      (PIL's ``convert`` keeps it); transparent pixels are mostly stored black, so this is usually what dropping
      alpha gives;
    - every other mode (L, 1, P, CMYK, YCbCr, …) by PIL's ``convert``.

    Values the mode does not define (``I`` outside 0–65535, ``F`` outside [0, 1] or not finite) raise
    :class:`OutOfRangeImage`: they are not intensities, and any scaling would be a guess."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise OutOfRangeImage(f"mode {image.mode} values {values.min()}..{values.max()} are not 16-bit")
        return _gray_to_rgb(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise OutOfRangeImage("float image values outside [0, 1]")
        return _gray_to_rgb(np.rint(values * 255).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        premultiplied = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(premultiplied.astype(np.uint8), "RGB")
    return image.convert("RGB")


def fit_image(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """The resize rule every image of the pipeline goes through: brought to 8-bit RGB by :func:`to_rgb8`, its
    shorter side resized to ``size`` (bilinear, antialiased), then centre-cropped to ``size`` × ``size``; an RGB
    image already of that size is kept pixel for pixel. It keeps the aspect ratio, as the usual 32×32 OOD
    benchmarks were made."""
    image = to_rgb8(image)
    if image.size != (size, size):
        from torchvision.transforms.v2 import functional as TF  # imported only when needed: it loads torch

        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
    return np.asarray(image, dtype=np.uint8)


def decode_image(payload: bytes, size: int = IMAGE_SIZE) -> tuple[np.ndarray | None, list[str], str | None]:
    """One image file → (``size``×``size``×3 uint8, what was changed, None) or (None, [], why it was skipped).

    What was changed: ``converted_to_rgb`` (grayscale, palette, RGBA, …) and ``resized`` (another size), as
    :func:`fit_image` does. An image whose header claims more than ``MAX_IMAGE_PIXELS`` is skipped as ``too_large``
    before any pixel is decoded, so a small file that decompresses to gigabytes costs nothing.
    """
    img = _open_header(payload)
    if isinstance(img, str):
        return None, [], img
    try:
        with img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return None, [], "too_large"
            img.load()
            changes = [name for name, changed in (("converted_to_rgb", img.mode != "RGB"),
                                                  ("resized", img.size != (size, size))) if changed]
            return fit_image(img, size), changes, None
    except Image.DecompressionBombError:
        return None, [], "too_large"
    except OutOfRangeImage:
        return None, [], "out_of_range"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None, [], "undecodable"
