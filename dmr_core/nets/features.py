"""The frozen classifier's representations of an image set, computed once and read by every detector.

``feature_map`` is the output of the module ``features.layer`` (by default the last convolutional feature map
N×C×H×W, the paper's head input; stored as float16), ``penultimate`` the classification layer's input N×D
(for the built-in architectures the feature map's global average), ``logits`` N×classes (both float32), all
read by :meth:`Classifier.representations` in one pass.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..device import autocast, batch_loader, place_images, place_model, resolve_device
from ..distributed import batch_aligned
from ..images import to_float_images
from .classifier_base import Classifier

REPRESENTATIONS = ("feature_map", "penultimate", "logits")


def extract_features(
    model: Classifier, images: np.ndarray, batch_size: int = 500, desc: str = "features",
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Every representation of every image (uint8 N×S×S×3 in), batched."""
    device = device or resolve_device()
    # a folded copy: the caller's model is left as it was (device, layout, trainability)
    model = place_model(model.for_inference(), device)
    loader = batch_loader(torch.from_numpy(np.asarray(images)), batch_size=batch_size)
    n = len(images)
    out: dict[str, np.ndarray] = {}
    start = 0
    for (x,) in tqdm(loader, desc=desc, leave=False):
        with torch.inference_mode():
            with autocast(device):
                found = model.representations(place_images(to_float_images(x), device))
        parts = {"feature_map": found["feature_map"].float().half(), "penultimate": found["penultimate"].float(),
                 "logits": found["logits"].float()}
        if not out:
            out = {k: np.empty((n,) + v.shape[1:], dtype=np.float16 if k == "feature_map" else np.float32)
                   for k, v in parts.items()}
        stop = start + len(x)
        for key, value in parts.items():
            out[key][start:stop] = value.cpu().numpy()
        start = stop
    return out


def extract_feature_rows(
    model: Classifier, images: np.ndarray, rows: range, batch_size: int = 500, desc: str = "features",
) -> dict[str, np.ndarray]:
    """``extract_features`` of ``images[rows]`` (a rank's share), computed in the batches one process computes
    them in (``batch_aligned``), so that each row comes out bit for bit as in a one-process run."""
    span = batch_aligned(rows, batch_size, len(images))
    if not len(span):
        return {}
    found = extract_features(model, images[span.start:span.stop], batch_size, desc=desc)
    return {key: value[rows.start - span.start:rows.stop - span.start] for key, value in found.items()}
