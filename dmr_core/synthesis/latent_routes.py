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

from ..distributed import rows_in_batches
from ..nets.generator import Generator, sample_class_latents
from .detail import encode_with_residuals

ROUTES = ("encoded", "sampled")


@dataclass(frozen=True)
class LatentSet:
    latents: np.ndarray              # float32 N × latent shape
    labels: np.ndarray               # the class of each latent
    residuals: np.ndarray | None     # int16 N×S×S×3 for the encoded route, None for the sampled one


def samples_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """How many latents the sampled route draws for each class: ``per_class``, or with 0 as many as the class has
    ID training images (so both routes give the synthesis the same number of sources per class)."""
    if per_class > 0:
        return np.full(num_classes, per_class, np.int64)
    return np.bincount(np.asarray(labels).astype(np.int64), minlength=num_classes)


def num_latents(route: str, labels: np.ndarray, num_classes: int, per_class: int = 0) -> int:
    """How many latents ``route`` gives: one per ID training image (encoded), or the per-class draws (sampled)."""
    if route == "sampled":
        return int(samples_per_class(labels, num_classes, per_class).sum())
    return len(labels)


def draw_latents(model: Generator, route: str, images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 batch_size: int, per_class: int = 0, seed: int = 0, rows: range | None = None) -> LatentSet:
    """The ID latents of ``route`` (see the module docstring); ``per_class`` and ``seed`` apply to ``sampled``.
    ``rows``: only these rows of the whole set (a rank's share, ``num_latents`` in all), each computed in the
    batch one process computes it in, so that it comes out to the same bits."""
    if route not in ROUTES:
        raise ValueError(f"unknown latents route {route!r}; choose from {ROUTES}")
    n = num_latents(route, labels, num_classes, per_class)
    rows = range(n) if rows is None else rows
    if not len(rows):  # a rank with no share (more ranks than chunks): nothing to compute
        return LatentSet(np.empty((0,), np.float32), np.asarray(labels)[:0],
                         np.empty((0,), np.int16) if route == "encoded" else None)
    if route == "encoded":
        latents, residuals = rows_in_batches(
            lambda span: encode_with_residuals(model, images[span.start:span.stop], batch_size,
                                               np.asarray(labels)[span.start:span.stop]),
            rows, batch_size, n)
        return LatentSet(latents, np.asarray(labels)[rows.start:rows.stop], residuals)
    counts = samples_per_class(labels, num_classes, per_class)
    latents, sampled_labels = rows_in_batches(
        lambda span: sample_class_latents(model, counts, seed, batch_size, rows=span), rows, batch_size, n)
    return LatentSet(latents, sampled_labels, None)
