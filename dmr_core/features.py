"""Frozen-classifier representations: computed once per image set and reused by every detector."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .classifier import CifarClassifier
from .device import autocast, batch_loader, place_images, place_model, resolve_device
from .training import to_float_images

REPRESENTATIONS = ("feature_map", "penultimate", "logits")


def extract_features(
    model: CifarClassifier, images: np.ndarray, batch_size: int = 500, desc: str = "features",
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """The flattened last feature map (float16), penultimate vector and logits (float32) of every image."""
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
        parts = {"feature_map": fmap.flatten(1).half(), "penultimate": pen, "logits": logits}
        if not out:
            out = {k: np.empty((n,) + v.shape[1:], dtype=np.float16 if k == "feature_map" else np.float32)
                   for k, v in parts.items()}
        stop = start + len(x)
        for key, value in parts.items():
            out[key][start:stop] = value.cpu().numpy()
        start = stop
    return out
