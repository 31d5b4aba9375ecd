"""DMR's synthesised OOD training set: mixed marginal latents (eq. 4 / 6 / 7) decoded by G, with fine detail
added back to a share of the images (``synthesis.detail``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..distributed import batch_aligned
from .detail import add_source_detail
from .latent_mixing import synthesize_latents


@dataclass(frozen=True)
class SynthConfig:
    """params.yaml section ``synth``."""

    method: str             # mlm | dmr | dmr_mlm
    k: int
    lambda_dist: str        # uniform | loguniform | choice
    lambda_min: float
    lambda_max: float
    normalise: bool
    detail: str             # none | residual | residual_dmr
    detail_fraction: float
    num_samples: int
    batch_size: int
    seed: int


@dataclass
class SynthesisedSet:
    images: np.ndarray          # uint8 N×S×S×3
    lambdas: np.ndarray         # λ of each image (1 for MLM)
    sources: np.ndarray         # N×k indices of the ID training images mixed
    source_labels: np.ndarray   # N×k their classes


def synthesised_blocks(
    latents: np.ndarray, labels: np.ndarray, class_means: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
    config: SynthConfig, residuals: Any = None, residual_means: Any = None, rows: range | None = None,
    block: int | None = None,
) -> Iterator[tuple[int, SynthesisedSet]]:
    """Draw sources and λ with ``config.seed``, mix their latents, decode them with ``decode`` (latents → uint8
    images, batched by ``config.batch_size``), and add the residual detail of their sources to
    ``config.detail_fraction`` of the images; yielded as ``(start, the rows from start)`` blocks of ``block`` rows
    (a whole number of batches; default: all at once), so that a stage can write each and hold none.

    ``rows``: only these rows of the ``config.num_samples`` (a rank's share). Every draw is made for the whole set,
    so a row holds what it holds in the whole set, and it is decoded in the batch one process decodes it in."""
    c = config
    mixed, sources, lambdas = synthesize_latents(
        latents, labels, class_means, method=c.method, k=c.k, num_samples=c.num_samples, lambda_dist=c.lambda_dist,
        lambda_min=c.lambda_min, lambda_max=c.lambda_max, seed=c.seed, normalise=c.normalise)
    rows = range(len(mixed)) if rows is None else rows
    span = batch_aligned(rows, c.batch_size, len(mixed))
    if not len(span):  # a rank with no share: an empty block, shaped as the decoded images are
        none = slice(0, 0)
        yield rows.start, SynthesisedSet(decode(mixed[none]), lambdas[none], sources[none],
                                         np.asarray(labels)[sources[none]])
        return
    block = len(span) if block is None else block
    if block % c.batch_size and block < len(span):
        raise ValueError(f"a block of {block} rows is not a whole number of batches of {c.batch_size}")
    for start in range(span.start, span.stop, block):
        part = range(start, min(start + block, span.stop))
        decoded = decode(mixed[part.start:part.stop])
        images = add_source_detail(decoded, c.detail, residuals, residual_means, labels, sources, lambdas, c.method,
                                   c.detail_fraction, c.seed, c.batch_size, rows=part)
        own = range(max(part.start, rows.start), min(part.stop, rows.stop))
        if len(own):
            cut = slice(own.start, own.stop)
            yield own.start, SynthesisedSet(images[own.start - part.start:own.stop - part.start], lambdas[cut],
                                            sources[cut], np.asarray(labels)[sources[cut]])


def synthesize_ood_images(
    latents: np.ndarray, labels: np.ndarray, class_means: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
    config: SynthConfig, residuals: Any = None, residual_means: Any = None, rows: range | None = None,
) -> SynthesisedSet:
    """``synthesised_blocks`` as one set (of ``rows``, default: all ``config.num_samples``)."""
    parts = [part for _, part in synthesised_blocks(latents, labels, class_means, decode, config, residuals,
                                                    residual_means, rows)]
    if len(parts) == 1:
        return parts[0]
    return SynthesisedSet(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(parts[0])))
