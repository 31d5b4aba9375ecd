"""The frozen classifier's representations of an image set, computed once and read by every detector.

``feature_map`` is the last convolutional feature map N×C×H×W (the paper's head input; stored as float16),
``penultimate`` its global average N×C, ``logits`` N×classes (both float32).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..device import autocast, batch_loader, place_images, place_model, resolve_device
from ..images import to_float_images
from .classifier import CifarClassifier

REPRESENTATIONS = ("feature_map", "penultimate", "logits")


def extract_features(
    model: CifarClassifier, images: np.ndarray, batch_size: int = 500, desc: str = "features",
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Every representation of every image (uint8 N×32×32×3 in), batched."""
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
                fmap = model.feature_map(place_images(to_float_images(x), device)).float()
            pen = model.penultimate(fmap)
            logits = model.logits_from_penultimate(pen)
        parts = {"feature_map": fmap.half(), "penultimate": pen, "logits": logits}
        if not out:
            out = {k: np.empty((n,) + v.shape[1:], dtype=np.float16 if k == "feature_map" else np.float32)
                   for k, v in parts.items()}
        stop = start + len(x)
        for key, value in parts.items():
            out[key][start:stop] = value.cpu().numpy()
        start = stop
    return out
