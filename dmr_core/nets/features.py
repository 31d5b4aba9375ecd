"""The frozen classifier's representations of an image set, computed once and read by every detector.

``feature_map`` is the output of the module ``features.layer`` (by default the last convolutional feature map
N×C×H×W, the paper's head input; stored as float16), ``penultimate`` the classification layer's input N×D
(for the built-in architectures the feature map's global average), ``logits`` N×classes (both float32), all
read by :meth:`Classifier.representations` in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.streams import row_batches, window
from ..device import autocast, place_images, place_model, resolve_device
from ..distributed import batch_aligned
from ..images import to_float_images
from .classifier_base import Classifier

REPRESENTATIONS = ("feature_map", "penultimate", "logits")


def feature_batches(
    model: Classifier, images: Any, batch_size: int = 500, desc: str = "features",
    device: torch.device | None = None, rows: range | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(start, every representation of the batch from start)`` over ``images[rows]`` (uint8 N×S×S×3: an array
    or a stored set, read a batch at a time) in batches of ``batch_size`` from ``rows.start``."""
    device = device or resolve_device()
    # a folded copy: the caller's model is left as it was (device, layout, trainability)
    model = place_model(model.for_inference(), device)
    rows = range(len(images)) if rows is None else rows
    for start, batch in tqdm(row_batches(images, batch_size, rows), desc=desc, leave=False,
                             total=-(-len(rows) // batch_size)):
        with torch.inference_mode():
            with autocast(device):
                found = model.representations(place_images(to_float_images(torch.from_numpy(batch)), device))
        yield start, {"feature_map": found["feature_map"].float().half().cpu().numpy(),
                      "penultimate": found["penultimate"].float().cpu().numpy(),
                      "logits": found["logits"].float().cpu().numpy()}


def extract_features(
    model: Classifier, images: Any, batch_size: int = 500, desc: str = "features",
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Every representation of every image (uint8 N×S×S×3 in: an array or a stored set), batched."""
    n = len(images)
    out: dict[str, np.ndarray] = {}
    for start, parts in feature_batches(model, images, batch_size, desc, device):
        if not out:
            out = {k: np.empty((n,) + v.shape[1:], dtype=v.dtype) for k, v in parts.items()}
        for key, value in parts.items():
            out[key][start:start + len(value)] = value
    return out


def extract_feature_rows(
    model: Classifier, images: Any, rows: range, batch_size: int = 500, desc: str = "features",
) -> dict[str, np.ndarray]:
    """``extract_features`` of ``images[rows]`` (a rank's share), computed in the batches one process computes
    them in (``batch_aligned``), so that each row comes out bit for bit as in a one-process run."""
    span = batch_aligned(rows, batch_size, len(images))
    if not len(span):
        return {}
    found = extract_features(model, window(images, span.start, span.stop), batch_size, desc=desc)
    return {key: value[rows.start - span.start:rows.stop - span.start] for key, value in found.items()}
