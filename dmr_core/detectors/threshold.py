"""The operating point of a detector on new images: the score above which an image is called OOD.

Rule: an image is OOD when ``score > threshold``. The threshold is the 95th percentile of the ID *test* scores in
the empirical-CDF sense (NumPy's ``inverted_cdf``): the smallest ID-test score at or below which at least 95 % of
the ID-test scores lie. So at least 95 % of ID test images are kept (score ≤ threshold), and no more than ties
force; the threshold is itself a score, so comparing a float32 score with it is exact.

This is the operating point of FPR@95TPR with ID as the positive class (the convention of OpenOOD and of most
papers): pytorch-ood's ``fpr_at_tpr`` on the negated scores with ID labelled positive stops at exactly this
threshold (the first whose true positive rate, ID kept, reaches 95 %), and the false positive rate it reports there
is the share of an OOD set's images kept, ``mean(ood_scores <= threshold)``. pytorch-ood 0.4's ``OODMetrics``
(what ``metrics/*.json`` report as FPR95TPR) takes OOD as the positive class instead: the share of ID images flagged
once 95 % of one OOD set is caught. That threshold depends on the OOD set, so it cannot be fixed for new images; the
ID side can, and is what "keeps 95 % of ID images" means.
"""

from __future__ import annotations

import numpy as np

ID_KEPT = 0.95
# the operating points stored with a run (param eval.keep_rates): a deployer trades ID images kept against OOD caught
KEEP_RATES = (0.90, 0.95, 0.99)
THRESHOLD_RULE = ("OOD when score > threshold; threshold = the smallest ID-test score with at least 95% of the "
                  "ID-test scores at or below it (95th percentile, inverted CDF)")


def ood_threshold(id_scores: np.ndarray, kept: float = ID_KEPT) -> float:
    """The smallest ID score with at least ``kept`` of the ID scores at or below it (see the module docstring)."""
    scores = np.asarray(id_scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("the ID scores are empty or not finite; cannot set a threshold")
    if not 0.0 < kept <= 1.0:
        raise ValueError(f"the share of ID images kept must be in (0, 1], got {kept}")
    return float(np.quantile(scores, kept, method="inverted_cdf"))


def is_ood(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``score > threshold`` per image, compared in float64 (a float32 score against the float64 threshold)."""
    return np.asarray(scores, dtype=np.float64) > threshold


def threshold_attrs(threshold: float) -> dict:
    """What an artifact stores about its threshold, so a reader needs nothing else to apply it."""
    return {"threshold": threshold, "threshold_rule": THRESHOLD_RULE, "id_kept": ID_KEPT}


def keep_key(kept: float) -> str:
    """The key an operating point is stored under: the share of ID images kept, e.g. ``"0.95"``."""
    return f"{kept:.4g}"


def operating_points(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray],
                     keep_rates: tuple[float, ...] | list[float] = KEEP_RATES) -> dict[str, dict]:
    """Per share of ID test images kept: its threshold, the share of ID test images actually kept (ties can keep
    more) and, per OOD set, the share of its images that pass as ID (``score <= threshold``: what gets through the
    gate; at 0.95 this is FPR@95TPR with ID as the positive class)."""
    points = {}
    for kept in sorted({*keep_rates, ID_KEPT}):
        threshold = ood_threshold(id_scores, kept)
        points[keep_key(kept)] = {
            "threshold": threshold,
            "id_kept": round(float(np.mean(~is_ood(id_scores, threshold))), 5),
            "passed": {name: round(float(np.mean(~is_ood(scores, threshold))), 5)
                       for name, scores in ood_scores.items()}}
    return points


def thresholds_of(points: dict[str, dict]) -> dict[str, float]:
    """{keep key: threshold} of :func:`operating_points`' result: what a reader of the run needs to apply each."""
    return {key: float(point["threshold"]) for key, point in points.items()}
