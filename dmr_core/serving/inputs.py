"""The images a list of inputs names (image files, folders searched recursively, tar archives), each decoded and
brought to the pipeline's 32×32 RGB.

Every file is tried as an image by its content, whatever its name; one that cannot be read is reported with the
reason, never fatal, so one bad file does not stop the scoring of a folder. Tar members are read in memory, never
extracted; members and images too large to be real are refused before they are read or decoded, with the caps
the data stage uses.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.sources import IMAGE_SIZE, MAX_MEMBER_BYTES
from ..data.sources import decode_image as decode_pipeline_image
from ..errors import DataError

# the data stage's reasons for skipping an image, as a user reads them
UNREADABLE_REASONS = {"undecodable": "not an image, or a corrupt one", "too_large": "too large to decode safely"}

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnreadableImage(ValueError):
    """A file or member that is not an image this project can use; the message says why."""


def decode_image(payload: bytes) -> np.ndarray:
    """A file's bytes as the pipeline's uint8 32×32×3 image, by the data stage's decoder and resize rule
    (:func:`dmr_core.data.sources.fit_image`), or :class:`UnreadableImage` saying why not."""
    image, _, reason = decode_pipeline_image(payload)
    if image is None:
        raise UnreadableImage(UNREADABLE_REASONS.get(reason, reason))
    return image


@dataclass(frozen=True)
class Item:
    """One thing to score: ``name`` as reported (``archive.tar:member`` for a tar member), the file, the member
    (its header, read when the archive was listed), or why it cannot be read at all."""

    name: str
    file: Path
    member: tarfile.TarInfo | None = None
    error: str | None = None


@dataclass(frozen=True)
class Decoded:
    """An item and its 32×32 image, or why it has none."""

    name: str
    image: np.ndarray | None
    error: str | None = None


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _archive_items(archive: Path) -> list[Item]:
    """One item per regular member, or one unreadable item for an archive that cannot be listed."""
    try:
        with tarfile.open(archive) as tar:
            return [Item(f"{archive}:{m.name}", archive, m) for m in tar if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as err:
        return [Item(str(archive), archive, error=f"not a readable tar archive ({err})")]


def list_items(inputs: Iterable[Path]) -> list[Item]:
    """Every item the inputs name, in order: files as given, folders walked recursively in sorted order, tar
    archives member by member. A path that does not exist is a :class:`DataError` (a typo, not a bad file)."""
    items: list[Item] = []
    for path in map(Path, inputs):
        if path.is_dir():
            files = sorted(Path(folder, name) for folder, _, names in os.walk(path) for name in names)
        elif path.exists():
            files = [path]
        else:
            raise DataError(f"{path}: no such file or folder")
        for file in files:
            items.extend(_archive_items(file) if is_archive(file) else [Item(str(file), file)])
    return items


def _read_file(file: Path) -> bytes:
    size = file.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise UnreadableImage(f"too large ({size} bytes)")
    return file.read_bytes()


def read_items(items: Iterable[Item]) -> Iterator[Decoded]:
    """Decode each item; an archive stays open while its members are read in a row."""
    open_archive: tuple[Path, tarfile.TarFile] | None = None
    try:
        for item in items:
            try:
                if item.error is not None:
                    raise UnreadableImage(item.error)
                if item.member is None:
                    image = decode_image(_read_file(item.file))
                else:
                    if open_archive is None or open_archive[0] != item.file:
                        if open_archive is not None:
                            open_archive[1].close()
                        open_archive = (item.file, tarfile.open(item.file))  # noqa: SIM115 -- closed below
                    if item.member.size > MAX_MEMBER_BYTES:
                        raise UnreadableImage(f"too large ({item.member.size} bytes)")
                    # the header read while listing locates the member's data in this handle of the same file
                    handle = open_archive[1].extractfile(item.member)
                    if handle is None:
                        raise UnreadableImage("not a regular file")
                    image = decode_image(handle.read())
            except UnreadableImage as err:
                yield Decoded(item.name, None, str(err))
            except (tarfile.TarError, EOFError, OSError) as err:
                yield Decoded(item.name, None, f"cannot be read ({getattr(err, 'strerror', None) or err})")
            else:
                assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
                yield Decoded(item.name, image)
    finally:
        if open_archive is not None:
            open_archive[1].close()
