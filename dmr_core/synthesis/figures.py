"""The paper's Figures 3 and 4: synthesised images as the mix-up parameter k, and the emphasis factor λ, grow, each
column drawn from the same sources so that only k or λ changes along it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .latent_mixing import mix_latents, sample_sources


def feasible_ks(ks: Sequence[int], num_classes: int) -> list[int]:
    """The rows a figure can show: k sources come from k distinct classes, so k above the class count is left out
    (a figure illustrates; it should not stop a run on a 3-class set)."""
    return [k for k in ks if k <= num_classes]


def fixed_sources(labels: np.ndarray, k: int, columns: int, seed: int) -> np.ndarray:
    """``columns`` × ``k`` source indices, the k of a column from k distinct classes (as the synthesis draws them);
    a figure's row with k' ≤ k mixes the first k' of them."""
    return sample_sources(labels, k, columns, np.random.default_rng(seed))


def k_sweep(latents: np.ndarray, labels: np.ndarray, means: np.ndarray, ks: Sequence[int], lam: float,
            sources: np.ndarray) -> list[np.ndarray]:
    """Figure 3: for each k, eq. 7 with λ fixed over the first k sources of every column (k = 1 is eq. 6)."""
    labels = np.asarray(labels).astype(np.int64)
    return [mix_latents(latents[sources[:, :k]], means[labels[sources[:, :k]]],
                        np.full(len(sources), lam, np.float32), "dmr_mlm") for k in ks]


def lambda_sweep(latents: np.ndarray, labels: np.ndarray, means: np.ndarray, lambdas: Sequence[float],
                 sources: np.ndarray) -> list[np.ndarray]:
    """Figure 4: for each λ, eq. 7 over all the sources of every column."""
    labels = np.asarray(labels).astype(np.int64)
    return [mix_latents(latents[sources], means[labels[sources]], np.full(len(sources), lam, np.float32), "dmr_mlm")
            for lam in lambdas]
