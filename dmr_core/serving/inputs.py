"""The images a list of inputs names (image files, folders searched recursively, tar archives), each decoded and
brought to the run's S×S RGB (S = the image size the run was trained at).

Every file is tried as an image by its content, whatever its name; one that cannot be read is reported with the
reason, never fatal, so one bad file does not stop the scoring of a folder. Tar members are read in memory, never
extracted; members and images too large to be real, and members whose names point outside the archive, are refused
before they are read or decoded, by the rules and caps the data stage uses. Inputs are read as a stream, so a
folder or archive of any size is scored in constant memory.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.sources import IMAGE_SIZE, MAX_MEMBER_BYTES, member_path_problem
from ..data.sources import decode_image as decode_pipeline_image
from ..errors import DataError

# the data stage's reasons for skipping an image, as a user reads them
UNREADABLE_REASONS = {"undecodable": "not an image, or a corrupt one", "too_large": "too large to decode safely",
                      "out_of_range": "pixel values its mode does not define (a float image outside [0, 1], an "
                                      "integer one above 16 bits)"}

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnreadableImage(ValueError):
    """A file or member that is not an image this project can use; the message says why."""


def decode_image(payload: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """A file's bytes as a uint8 ``size``×``size``×3 image, by the data stage's decoder and resize rule
    (:func:`dmr_core.data.sources.fit_image`), or :class:`UnreadableImage` saying why not."""
    image, _, reason = decode_pipeline_image(payload, size)
    if image is None:
        raise UnreadableImage(UNREADABLE_REASONS.get(reason, reason))
    return image


@dataclass(frozen=True)
class Decoded:
    """One thing scored: ``name`` as reported (``archive.tar:member`` for a tar member) and its S×S image, or
    why it has none."""

    name: str
    image: np.ndarray | None
    error: str | None = None


def is_archive(path: Path | str) -> bool:
    return os.path.basename(path).lower().endswith(TAR_SUFFIXES)


def check_inputs(inputs: Iterable[Path]) -> list[Path]:
    """The inputs as paths; one that does not exist is a :class:`DataError` (a typo, not a bad file), raised before
    any image is read."""
    paths = [Path(path) for path in inputs]
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
    return paths


def _files(path: Path) -> Iterator[str | Decoded]:
    """A file itself, or a folder's files, recursively, in the order the file system lists them (subfolders entered
    as they are met): only the open listings of the current branch are held, so a folder of a million files costs
    what a folder of ten does. (A sorted walk would hold every name of a folder; rows carry their path, so sort the
    output if order matters.) Names stay strings: pathlib interns every part of every path it parses, for the life
    of the process. Links to folders are not followed (as os.walk does not), so a link loop cannot recurse; a folder
    that cannot be listed is a row saying so."""
    if path.is_dir():
        yield from _walk(str(path))
    else:
        yield str(path)


def _walk(folder: str) -> Iterator[str | Decoded]:
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield from _walk(entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    yield Decoded(entry.path, None, "a link to a folder, not followed")
                else:
                    yield entry.path
    except OSError as err:
        yield Decoded(folder, None, f"folder cannot be listed ({err.strerror or err})")


def _read_file(file: str, image_size: int) -> Decoded:
    try:
        size = os.stat(file).st_size
        if size > MAX_MEMBER_BYTES:
            raise UnreadableImage(f"too large ({size} bytes)")
        with open(file, "rb") as handle:
            return Decoded(file, decode_image(handle.read(), image_size))
    except UnreadableImage as err:
        return Decoded(file, None, str(err))
    except OSError as err:
        return Decoded(file, None, f"cannot be read ({err.strerror or err})")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, image_size: int) -> Decoded:
    try:
        problem = member_path_problem(member.name)
        if problem is not None:
            raise UnreadableImage(f"not read: {problem}")
        if member.size > MAX_MEMBER_BYTES:
            raise UnreadableImage(f"too large ({member.size} bytes)")
        handle = tar.extractfile(member)
        if handle is None:
            raise UnreadableImage("not a regular file")
        return Decoded(name, decode_image(handle.read(), image_size))
    except UnreadableImage as err:
        return Decoded(name, None, str(err))
    except (tarfile.TarError, EOFError, OSError) as err:  # the archive then ends with a row of its own
        return Decoded(name, None, f"cannot be read ({getattr(err, 'strerror', None) or err})")


def _read_archive(archive: Path, image_size: int) -> Iterator[Decoded]:
    """Each regular member in archive order, decoded as it is met; an archive that cannot be read (or stops being
    readable part-way) is one row saying so, after the members read before it."""
    try:
        with tarfile.open(archive) as tar:
            while (member := tar.next()) is not None:
                # tarfile keeps every header it has read (for getmembers); dropping them keeps the memory of a
                # 100,000-member archive that of one member
                tar.members.clear()
                if member.isfile():
                    yield _read_member(tar, member, f"{archive}:{member.name}", image_size)
    except (tarfile.TarError, EOFError, OSError) as err:
        yield Decoded(str(archive), None, f"not a readable tar archive ({err})")


def read_inputs(inputs: Iterable[Path], image_size: int = IMAGE_SIZE) -> Iterator[Decoded]:
    """Every image the inputs name, decoded one at a time in order (files as given, folders walked recursively in
    the file system's order, tar archives member by member) and brought to ``image_size`` (the run's): memory does
    not grow with the number of images."""
    for path in inputs:
        for file in _files(Path(path)):
            if isinstance(file, Decoded):
                yield file
            elif is_archive(file):
                yield from _read_archive(file, image_size)
            else:
                decoded = _read_file(file, image_size)
                assert decoded.image is None or decoded.image.shape == (image_size, image_size, 3)
                yield decoded
