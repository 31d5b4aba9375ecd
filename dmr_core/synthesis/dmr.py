"""DMR's synthesised OOD training set: mixed marginal latents (eq. 4 / 6 / 7) decoded by G, with fine detail
added back to a share of the images (``synthesis.detail``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..distributed import rows_in_batches
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


def synthesize_ood_images(
    latents: np.ndarray, labels: np.ndarray, class_means: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
    config: SynthConfig, residuals: Any = None, residual_means: Any = None, rows: range | None = None,
) -> SynthesisedSet:
    """Draw sources and λ with ``config.seed``, mix their latents, decode them with ``decode`` (latents → uint8
    images, batched by ``config.batch_size``), and add the residual detail of their sources to
    ``config.detail_fraction`` of the images.

    ``rows``: only these rows of the ``config.num_samples`` (a rank's share). Every draw is made for the whole set,
    so a row holds what it holds in the whole set, and it is decoded in the batch one process decodes it in."""
    c = config
    mixed, sources, lambdas = synthesize_latents(
        latents, labels, class_means, method=c.method, k=c.k, num_samples=c.num_samples, lambda_dist=c.lambda_dist,
        lambda_min=c.lambda_min, lambda_max=c.lambda_max, seed=c.seed, normalise=c.normalise)
    rows = range(len(mixed)) if rows is None else rows
    decoded = rows_in_batches(lambda span: decode(mixed[span.start:span.stop]), rows, c.batch_size, len(mixed))
    window = slice(rows.start, rows.stop)
    images = add_source_detail(decoded, c.detail, residuals, residual_means, labels, sources, lambdas, c.method,
                               c.detail_fraction, c.seed, c.batch_size, rows=rows)
    return SynthesisedSet(images, lambdas[window], sources[window], np.asarray(labels)[sources[window]])
