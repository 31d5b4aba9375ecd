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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.streams import row_batches
from ..distributed import batch_aligned, rows_in_batches
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


def latent_blocks(model: Generator, route: str, images: Any, labels: np.ndarray, num_classes: int, *,
                  batch_size: int, per_class: int = 0, seed: int = 0, rows: range | None = None
                  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """The ID latents of ``route`` as ``(start, {"latents", "labels"[, "residuals"]})`` blocks in row order over
    ``rows`` (default: all ``num_latents``; a rank's share), each row computed in the batch one process computes it
    in, so that it comes out to the same bits. The encoded route reads ``images`` (an array or a stored set) a batch
    at a time and yields a block per batch; the sampled route reads none and yields one block."""
    if route not in ROUTES:
        raise ValueError(f"unknown latents route {route!r}; choose from {ROUTES}")
    n = num_latents(route, labels, num_classes, per_class)
    rows = range(n) if rows is None else rows
    if not len(rows):  # a rank with no share (more ranks than chunks): nothing to compute
        return
    if route == "sampled":
        counts = samples_per_class(labels, num_classes, per_class)
        latents, sampled_labels = rows_in_batches(
            lambda span: sample_class_latents(model, counts, seed, batch_size, rows=span), rows, batch_size, n)
        yield rows.start, {"latents": latents, "labels": sampled_labels}
        return
    labels = np.asarray(labels)
    span = batch_aligned(rows, batch_size, n)
    for start, batch in tqdm(row_batches(images, batch_size, span), desc="encode", leave=False,
                             total=-(-len(span) // batch_size)):
        latents, residuals = encode_with_residuals(model, batch, batch_size, labels[start:start + len(batch)])
        first, last = max(start, rows.start), min(start + len(batch), rows.stop)
        if first < last:
            yield first, {"latents": latents[first - start:last - start], "labels": labels[first:last],
                          "residuals": residuals[first - start:last - start]}


class LatentTally:
    """What the latent blocks passed through ``add`` held, without holding them: the shape of a latent, and the sum
    of squared residuals and their count (the reconstruction residual's RMS)."""

    def __init__(self) -> None:
        self.squares, self.count, self.latent_shape = 0.0, 0, ()

    def add(self, block: tuple[int, dict[str, np.ndarray]]) -> tuple[int, dict[str, np.ndarray]]:
        self.latent_shape = block[1]["latents"].shape[1:]
        residuals = block[1].get("residuals")
        if residuals is not None:
            values = residuals.astype(np.float32)
            self.squares += float(np.square(values, out=values).sum(dtype=np.float64))
            self.count += values.size
        return block


def draw_latents(model: Generator, route: str, images: Any, labels: np.ndarray, num_classes: int, *,
                 batch_size: int, per_class: int = 0, seed: int = 0, rows: range | None = None) -> LatentSet:
    """The ID latents of ``route`` (see the module docstring) as one set: ``latent_blocks`` joined; ``per_class``
    and ``seed`` apply to ``sampled``, ``rows`` selects a rank's share."""
    blocks = [block for _, block in latent_blocks(model, route, images, labels, num_classes, batch_size=batch_size,
                                                   per_class=per_class, seed=seed, rows=rows)]
    if not blocks:
        return LatentSet(np.empty((0,), np.float32), np.asarray(labels)[:0],
                         np.empty((0,), np.int16) if route == "encoded" else None)
    joined = {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}
    return LatentSet(joined["latents"], joined["labels"], joined.get("residuals"))
