"""DMR's head score combined with a post-hoc score (the paper notes that DMR combines with other detectors).

Both scores are put on one scale by standardising each with the mean and standard deviation of its own
scores on a fixed subset of ID *training* images (no test image is used to set the scale), then added:

    s(x) = (s_DMR(x) − m_DMR) / σ_DMR + (s_post(x) − m_post) / σ_post

Training-set statistics are slightly optimistic for both (the head was trained on these images; a kNN
score counts the image itself among its neighbours), which shifts and scales a score but does not
reorder it.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import evaluate_scores


def standardise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(scores − mean(reference)) / std(reference), in float64."""
    reference = np.asarray(reference, dtype=np.float64)
    spread = reference.std()
    if not np.isfinite(spread) or spread == 0:
        raise ValueError("the reference scores have no spread; cannot standardise")
    return (np.asarray(scores, dtype=np.float64) - reference.mean()) / spread


def combined_scores(dmr: np.ndarray, posthoc: np.ndarray, dmr_reference: np.ndarray,
                    posthoc_reference: np.ndarray) -> np.ndarray:
    """The sum of the two standardised scores (higher = more OOD)."""
    if len(dmr) != len(posthoc):
        raise ValueError(f"{len(dmr)} DMR scores but {len(posthoc)} post-hoc scores")
    return standardise(dmr, dmr_reference) + standardise(posthoc, posthoc_reference)


def reference_rows(num_train: int, size: int, seed: int) -> np.ndarray:
    """The ID-training rows whose scores set each score's scale: a seeded subset of ``size`` rows (all of them
    when the set is smaller), ascending."""
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:min(size, num_train)])


def combined_metrics(dmr_id: np.ndarray, dmr_ood: dict[str, np.ndarray], dmr_reference: np.ndarray,
                     posthoc_id: np.ndarray, posthoc_ood: dict[str, np.ndarray],
                     posthoc_reference: np.ndarray) -> dict[str, dict[str, float]]:
    """OOD metrics of the combined score per OOD set and their mean (``evaluate_scores``)."""
    return evaluate_scores(combined_scores(dmr_id, posthoc_id, dmr_reference, posthoc_reference),
                           {name: combined_scores(scores, posthoc_ood[name], dmr_reference, posthoc_reference)
                            for name, scores in dmr_ood.items()})
