"""Test sets a metric can average over: each image counted once, no ID image among the OOD ones, no training
image among the ID test ones.

Two kinds of content make a test number meaningless without saying so. A set that repeats an image (a folder of
copies, an archive listing a member twice, files that the resize rule turns into one image) weighs that image by
its copies: an AUROC over 1,000 files may be an AUROC over ten. And a set holding the wrong side's images measures
nothing: an "OOD" set with CIFAR-10 images in it counts the detector's correct answers on them as errors, and an ID
test split holding training images scores the classifier and the detector on what they were fitted to. Both are
found byte for byte after the resize rule (:mod:`.leakage`'s digests), so no two different images are ever taken
for one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from .datasets import ImageSet
from .leakage import coinciding_images, image_digests

REPEATED = "repeated"  # the reason counted in an ImageSet's ``skipped`` for each copy dropped


def first_occurrences(images: np.ndarray) -> np.ndarray:
    """A boolean mask over uint8 N×H×W×3 ``images`` that keeps the first of each set of identical images."""
    seen: set[bytes] = set()
    keep = np.zeros(len(images), dtype=bool)
    for index, digest in enumerate(image_digests(images)):
        keep[index] = digest not in seen
        seen.add(digest)
    return keep


def without_repeats(image_set: ImageSet) -> ImageSet:
    """``image_set`` with every repeat of an image dropped (the first kept), each drop counted under
    :data:`REPEATED` in ``skipped``; the set itself when it repeats nothing."""
    keep = first_occurrences(image_set.images)
    dropped = int((~keep).sum())
    if not dropped:
        return image_set
    skipped = dict(image_set.skipped)
    skipped[REPEATED] = skipped.get(REPEATED, 0) + dropped
    return dataclasses.replace(image_set, images=image_set.images[keep], labels=image_set.labels[keep],
                               skipped=skipped)


def refuse_shared_images(candidates: Mapping[str, np.ndarray], others: Mapping[str, Any], what: str,
                         remedy: str) -> None:
    """Raise a one-line :class:`DataError` if any image of ``candidates`` (one set, as several arrays that hold the
    same images in different encodings, e.g. as stored and as passed through the ID encoding) is identical to an
    image of ``others`` (each its images, or their ``ImageDigests``); ``what`` names the set, ``remedy`` says what
    to do."""
    hits = {form: coinciding_images(images, others) for form, images in candidates.items()}
    form, found = max(hits.items(), key=lambda item: item[1].total)
    if found.total:
        where = ", ".join(f"{name}: {count:,}" for name, count in found.per_set.items())
        encoded = f" {form}" if len(candidates) > 1 else ""
        side = candidates[form].shape[1]
        raise DataError(f"{what}: {found.total:,} of its {len(candidates[form]):,} images{encoded} are identical "
                        f"(after the {side}×{side} resize rule) to images of {where}; {remedy}")
