"""MIM (pixel-space mixup of ID images from distinct classes), the paper's Table 1 baseline for DMR's latent mixing."""

from __future__ import annotations

import numpy as np


def pixel_mixup(images: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """The pixel-space average of the k source images of each sample (uint8 in, uint8 out)."""
    mixed = images[sources].astype(np.float32).mean(axis=1)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
