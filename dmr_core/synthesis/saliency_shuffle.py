"""Outliers from the classifier's own saliency, as ASCOOD synthesises them: in an ID image, shuffle the pixels that
the gradient of its true class marks.

For an ID image x of class y, the saliency of pixel p is the gradient of F's logit for y, summed in magnitude over
the colour channels,

    s(p) = Σ_c |∂ z_y(x) / ∂ x_{c,p}|,

and the ``share`` of pixels with the largest s are permuted among themselves (one uniform permutation per image,
the same for every channel), every other pixel kept. The outlier keeps the image's colours, its histogram and most
of its layout, so nothing low-level tells it from an ID image; what F took for evidence of y is scrambled. Like
KIRBY's erased objects it is made from the classifier's view of each image, not from a generator.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..images import to_float_images
from ..nets.classifier_base import Classifier


def input_saliency(classifier: Classifier, images: np.ndarray, labels: np.ndarray,
                   batch_size: int = 250) -> np.ndarray:
    """s(p) for uint8 N×H×W×3 ``images`` of classes ``labels``: float32 N×H×W, Σ_c |∂ z_y / ∂ x_{c,p}| with x the
    image in [0, 1] as F reads it."""
    classifier = classifier.eval()
    out = np.empty(images.shape[:3], dtype=np.float32)
    for start in tqdm(range(0, len(images), batch_size), desc="saliency", leave=False):
        x = to_float_images(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
        x.requires_grad_(True)
        y = torch.from_numpy(np.asarray(labels[start:start + batch_size], dtype=np.int64))
        with torch.enable_grad():
            logits = classifier(x)
            # the images are independent, so the gradient of the sum is each image's own gradient
            (gradient,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
        out[start:start + len(x)] = gradient.abs().sum(1).numpy()
    return out


def shuffle_salient_pixels(images: np.ndarray, saliency: np.ndarray, share: float,
                           rng: np.random.Generator) -> np.ndarray:
    """Each uint8 H×W×3 image with its ``share`` most salient pixels (ties by position) permuted among themselves
    by a permutation drawn from ``rng``, one image after another; every other pixel as it was."""
    if not 0 < share < 1:
        raise ValueError(f"share = {share}: give a share of pixels in (0, 1)")
    n, h, w, c = images.shape
    marked = max(2, int(round(share * h * w)))
    out = np.array(images, copy=True).reshape(n, h * w, c)
    order = np.argsort(-saliency.reshape(n, h * w), axis=1, kind="stable")[:, :marked]
    for i in range(n):
        pixels = order[i]
        out[i, pixels] = out[i, pixels[rng.permutation(marked)]]
    return out.reshape(n, h, w, c)
