"""Keeping test images out of what a method trains on (Outlier Exposure's outlier set): by path, before any image
is read, and by content, byte for byte after the pipeline's resize rule.

A method that trains on real outliers (Hendrycks et al. 2019) measured on an OOD test set it trained on would
report how well it remembers that set, not how well it detects the unknown. The path check catches the obvious
mistake (naming a test set's folder, or a folder holding it); the content check catches copies of test images
anywhere else, e.g. a folder of downloaded images that shares files with a benchmark.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .streams import batches

DIGEST_BATCH = 4096  # images digested per read of a stored set


def path_relation(candidate: Path, protected: Path) -> str | None:
    """How ``candidate`` stands to ``protected`` on disk: ``"is"``, ``"contains"``, ``"lies inside"``, or None
    when neither holds the other. Both are resolved first (links, ``..``), so another spelling of one path is
    the same path."""
    a, b = Path(os.path.realpath(candidate)), Path(os.path.realpath(protected))
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def image_digests(images: Any) -> list[bytes]:
    """One digest per image of uint8 N×H×W×3 images (an array or a stored set, read a chunk at a time; BLAKE2b of
    its bytes): equal digests are equal images, to one chance in 2¹²⁸ otherwise."""
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest()
            for batch in batches(images, DIGEST_BATCH) for image in np.ascontiguousarray(batch, dtype=np.uint8)]


class ImageDigests:
    """The digests of one image set, computed once for every later check against it (the data stage checks each
    OOD set, in each of its forms, against the same ID splits)."""

    def __init__(self, images: Any) -> None:
        self.digests = frozenset(image_digests(images))


@dataclass(frozen=True)
class Coincidence:
    """How many candidate images equal a test image: in all (each counted once) and per test set."""

    total: int
    per_set: dict[str, int]


def coinciding_images(candidates: np.ndarray, test_sets: Mapping[str, Any]) -> Coincidence:
    """The candidate images (uint8 N×H×W×3) byte-identical to an image of any of ``test_sets`` (same layout; each
    its images or their ``ImageDigests``)."""
    digests = image_digests(candidates)
    hit = np.zeros(len(digests), dtype=bool)
    per_set = {}
    for name, images in test_sets.items():
        seen = images.digests if isinstance(images, ImageDigests) else set(image_digests(images))
        found = np.fromiter((d in seen for d in digests), dtype=bool, count=len(digests))
        if found.any():
            per_set[name] = int(found.sum())
        hit |= found
    return Coincidence(int(hit.sum()), per_set)


def refuse_test_images(candidates: np.ndarray, test_sets: Mapping[str, Any], what: str) -> None:
    """Raise a one-line :class:`DataError` if any candidate image is identical to a test image, naming how many
    coincide and in which sets; ``what`` names the candidates (e.g. the params key and its value)."""
    found = coinciding_images(candidates, test_sets)
    if found.total:
        where = ", ".join(f"{name}: {count:,}" for name, count in found.per_set.items())
        side = candidates.shape[1]
        raise DataError(f"{what}: {found.total:,} of its {len(candidates):,} images are identical (after the "
                        f"{side}×{side} resize rule) to test images ({where}); a method must never train "
                        "on the images it is tested on: remove them from the outlier set")
