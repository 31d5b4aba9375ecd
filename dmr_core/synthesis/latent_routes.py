"""Where the latents DMR mixes come from (``latents.route``).

- ``encoded``: w = E(x) of every ID training image (with the residual r = x − G(E(x)) that G loses), and
  μ_y = the mean of E(x) over class y (paper §3, eq. 5);
- ``sampled``: w = M(z, c), z ~ N(0, I), drawn per class from a class-conditional generator's mapping network, as
  the authors' notebooks ran DMR on StyleGAN-XL; μ_c is then M's per-class average E_z[M(z, c)] (StyleGAN's
  ``w_avg`` per class), estimated by the mean of the samples. No image stands behind a sampled latent, so there is
  no residual (``synth.detail`` must be ``none``).

Either way the result is a set of (latent, class) pairs; the mixing equations (``latent_mixing``) do not know
which route gave it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..nets.generator import Generator, sample_class_latents
from .detail import encode_with_residuals

ROUTES = ("encoded", "sampled")


@dataclass(frozen=True)
class LatentSet:
    latents: np.ndarray              # float32 N × latent shape
    labels: np.ndarray               # the class of each latent
    residuals: np.ndarray | None     # int16 N×32×32×3 for the encoded route, None for the sampled one


def samples_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """How many latents the sampled route draws for each class: ``per_class``, or with 0 as many as the class has
    ID training images (so both routes give the synthesis the same number of sources per class)."""
    if per_class > 0:
        return np.full(num_classes, per_class, np.int64)
    return np.bincount(np.asarray(labels).astype(np.int64), minlength=num_classes)


def draw_latents(model: Generator, route: str, images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 batch_size: int, per_class: int = 0, seed: int = 0) -> LatentSet:
    """The ID latents of ``route`` (see the module docstring); ``per_class`` and ``seed`` apply to ``sampled``."""
    if route == "encoded":
        latents, residuals = encode_with_residuals(model, images, batch_size, labels)
        return LatentSet(latents, np.asarray(labels), residuals)
    if route == "sampled":
        latents, sampled_labels = sample_class_latents(
            model, samples_per_class(labels, num_classes, per_class), seed, batch_size)
        return LatentSet(latents, sampled_labels, None)
    raise ValueError(f"unknown latents route {route!r}; choose from {ROUTES}")
