"""KIRBY-style OOD synthesis (Kwon et al., 2023): erase what the classifier looks at, inpaint the hole.

For each ID image, the class activation map (CAM, Zhou et al. 2016) of the frozen classifier for its
predicted class is normalised to [0, 1] and upsampled to the image size; pixels above ``threshold``
(0.3 as in the KIRBY code) are erased and filled by Telea inpainting (OpenCV), leaving a
background-like image without the class-discriminative object.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.nn import functional as nnf
from tqdm import tqdm


def class_activation_maps(feature_maps: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor,
                          size: int = 32) -> torch.Tensor:
    """CAM_y = Σ_c w_{y,c} · A_c for each image's class y, min-max normalised per image and upsampled (N×size×size)."""
    cams = torch.einsum("nchw,nc->nhw", feature_maps.float(), weight[classes].float())
    flat = cams.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    cams = (cams - lo) / (hi - lo).clamp_min(1e-8)
    return nnf.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def erase_and_inpaint(images: np.ndarray, cams: np.ndarray, threshold: float = 0.3, radius: int = 3) -> np.ndarray:
    """Telea-inpaint every pixel whose CAM exceeds ``threshold``; uint8 N×H×W×3 in and out."""
    out = np.empty_like(images)
    masks = (cams > threshold).astype(np.uint8)

    def inpaint_rows(rows: range) -> int:
        for i in rows:
            out[i] = cv2.inpaint(np.ascontiguousarray(images[i]), masks[i], radius, cv2.INPAINT_TELEA)
        return len(rows)

    # OpenCV releases the GIL, so threads inpaint chunks of images in parallel; each image is independent,
    # so the result does not depend on the number of threads
    chunks = [range(start, min(start + 500, len(images))) for start in range(0, len(images), 500)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            tqdm(total=len(images), desc="kirby inpaint", leave=False) as progress:
        for done in pool.map(inpaint_rows, chunks):
            progress.update(done)
    return out
