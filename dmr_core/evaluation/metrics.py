"""OOD metrics (pytorch-ood's OODMetrics; OOD = positive, higher score = more OOD)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.encoding import AS_STORED_SUFFIX, is_as_stored

METRIC_KEYS = ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")
# OpenOOD v1.5 (Zhang et al. 2023) reports CIFAR's OOD sets in two groups: near-OOD, natural images semantically
# close to the ID classes (the other CIFAR, Tiny ImageNet with the classes that overlap CIFAR-10 removed), and far-OOD,
# the rest (digits, textures, icons, scenes, noise, a user's own sets). A method that wins only on far-OOD noise is not
# a better detector. An ID set is never its own OOD set, so listing both CIFARs names the other one.
NEAR_OOD_SETS = ("tinyimagenet_part", "tinyimagenet_crop", "cifar10", "cifar100")
# near_far_mean, the average of the near and far means, weighs near-OOD as much as far-OOD whatever the number of sets
# in each group: it is the summary defaults are chosen by (the mean over sets lets one near set count 1/6).
SUMMARY_KEYS = ("near_mean", "far_mean", "near_far_mean", "mean")


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-IN, AUPR-OUT and FPR@95TPR in percent, for ID (label 0) vs OOD (label -1)."""
    # imported here, not at the top: pytorch-ood's import (scipy, torchvision) costs seconds that the stages using
    # only the other helpers need not pay
    from pytorch_ood.metrics import OODMetrics

    metrics = OODMetrics()
    scores = torch.from_numpy(np.concatenate([id_scores, ood_scores]).astype(np.float32))
    labels = torch.cat([torch.zeros(len(id_scores), dtype=torch.long), -torch.ones(len(ood_scores), dtype=torch.long)])
    metrics.update(scores, labels)
    values = metrics.compute()
    return {key: round(float(values[key]) * 100.0, 3) for key in METRIC_KEYS}


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.mean([m[key] for m in metrics])), 3) for key in METRIC_KEYS}


def summarise(per_set: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The unweighted means of per-set metrics: ``near_mean`` over the near-OOD sets, ``far_mean`` over the others
    and ``near_far_mean``, their average, when both kinds are present; ``mean`` over all sets."""
    near = [m for name, m in per_set.items() if name in NEAR_OOD_SETS]
    far = [m for name, m in per_set.items() if name not in NEAR_OOD_SETS]
    summary = {}
    if near and far:
        summary = {"near_mean": _mean(near), "far_mean": _mean(far)}
        summary["near_far_mean"] = _mean([summary["near_mean"], summary["far_mean"]])
    return {**summary, "mean": _mean(list(per_set.values()))}


def evaluate_scores(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Metrics per OOD set, then their summaries (:func:`summarise`). Sets evaluated as stored beside their
    encoding-matched copy (``<name>.as_stored``, see ``dmr_core.data.encoding``) are summarised apart, under
    ``<summary>.as_stored``, so that every summary compares like with like."""
    per_set = {name: ood_metrics(id_scores, scores) for name, scores in ood_scores.items()}
    matched = {name: m for name, m in per_set.items() if not is_as_stored(name)}
    as_stored = {name.removesuffix(AS_STORED_SUFFIX): m for name, m in per_set.items() if is_as_stored(name)}
    result = {**per_set, **summarise(matched)}
    if as_stored:
        result.update({key + AS_STORED_SUFFIX: m for key, m in summarise(as_stored).items()})
    return result


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray, max_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, thinned to at most ``max_points`` for plotting."""
    y = np.concatenate([np.zeros(len(id_scores)), np.ones(len(ood_scores))])
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, np.concatenate([id_scores, ood_scores]), drop_intermediate=True)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr

