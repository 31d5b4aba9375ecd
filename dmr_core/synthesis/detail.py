"""Fine detail for synthesised images: the residual r = x − G(E(x)) that the generator loses.

A blurry generator G lets the rejection head separate "sharp = ID" from "smooth = OOD". The residual holds the
fine detail G loses; (w, r) is then a lossless two-level code of x. Two ways to give a synthesised sample fine
detail (``synth.detail``):

- ``residual``:     x = G(w_mix) + Σ_i r_i / √k  (``mix_detail``; keeps the energy of one residual)
- ``residual_dmr``: x = G(w_mix) + r_mix, where r_mix is the same equation (4 / 6 / 7) as w_mix, applied
  to the residuals with their own class means and the same λ (``mix_latents`` on r).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.streams import take_rows
from ..nets.generator import Generator, decode_to_images, encode_images
from .latent_mixing import mix_latents

# (source residuals n×k×H×W×C int16, their classes' mean residuals n×k×H×W×C, λ per sample, mixing method)
# → detail n×H×W×C float32
DetailMix = Callable[[np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]


def reconstruction_residuals(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """r = x − G(E(x)) per pixel, as int16 in [−255, 255] (uint8 N×H×W×C in)."""
    if images.shape != reconstructions.shape:
        raise ValueError(f"images {images.shape} and reconstructions {reconstructions.shape} differ in shape")
    return images.astype(np.int16) - reconstructions.astype(np.int16)


def encode_with_residuals(model: Generator, images: np.ndarray, batch_size: int,
                          labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(w = E(x), r = x − G(E(x))) of every image: the latents DMR mixes and the detail G loses (``labels``: the
    images' classes, for a class-conditional generator)."""
    latents = encode_images(model, images, batch_size=batch_size, labels=labels)
    return latents, reconstruction_residuals(images, decode_to_images(model, latents, batch_size))


def mix_detail(source_residuals: np.ndarray) -> np.ndarray:
    """Σ_i r_i / √k over the k sources of each sample: (n, k, H, W, C) int16 → (n, H, W, C) float32."""
    k = source_residuals.shape[1]
    return source_residuals.astype(np.float32).sum(axis=1) / np.float32(np.sqrt(k))


def add_detail(decoded: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """G(w) + detail, rounded and clipped to uint8."""
    return np.clip(np.rint(decoded.astype(np.float32) + detail), 0, 255).astype(np.uint8)


DETAIL_MIXES: dict[str, DetailMix] = {
    "residual": lambda residuals, means, lambdas, method: mix_detail(residuals),
    "residual_dmr": lambda residuals, means, lambdas, method: mix_latents(residuals.astype(np.float32), means,
                                                                          lambdas, method),
}
DETAIL_KINDS = ("none", *DETAIL_MIXES)


def detail_rows(num_images: int, fraction: float, seed: int) -> np.ndarray:
    """The seeded share ``fraction`` of the synthesised images that get fine detail (indices, ascending)."""
    return np.flatnonzero(np.random.default_rng([seed, 1]).random(num_images) < fraction)


def add_source_detail(
    images: np.ndarray, kind: str, residuals: Any, residual_means: Any, labels: np.ndarray, sources: np.ndarray,
    lambdas: np.ndarray, method: str, fraction: float, seed: int, batch_size: int, rows: range | None = None,
) -> np.ndarray:
    """``images`` (uint8, changed in place and returned) with the ``kind`` detail of their sources added to the
    seeded ``fraction`` of them. ``residuals`` / ``residual_means``: array-likes (NumPy or zarr) of every ID
    training image's residual and each class's mean residual; read only when ``kind`` is not ``none``.
    ``rows``: the rows of the whole synthesised set ``images`` holds (``sources`` and ``lambdas`` are the whole
    set's); the share getting detail is drawn over the whole set, so a row gets what it gets in the whole set."""
    if kind == "none":
        return images
    if kind not in DETAIL_MIXES:
        raise ValueError(f"unknown detail kind {kind!r}; choose from {DETAIL_KINDS}")
    rows = range(len(images)) if rows is None else rows
    chosen = detail_rows(len(sources), fraction, seed)
    chosen = chosen[(chosen >= rows.start) & (chosen < rows.stop)]
    if not len(chosen):
        return images
    # only the residuals of these rows' sources are read (a streamed block's, or every one for the whole set)
    needed = np.unique(sources[chosen])
    residuals, residual_means = take_rows(residuals, needed), np.asarray(residual_means[:])
    for start in range(0, len(chosen), batch_size):  # in batches: n × k residuals would not fit comfortably
        picked_rows = chosen[start:start + batch_size]
        picked = sources[picked_rows]
        detail = DETAIL_MIXES[kind](residuals[np.searchsorted(needed, picked)], residual_means[labels[picked]],
                                    lambdas[picked_rows], method)
        at = picked_rows - rows.start
        images[at] = add_detail(images[at], detail)
    return images
