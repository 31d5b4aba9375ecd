"""The summary AUROCs a run's detectors are compared by (near-OOD, far-OOD, their average, the mean over sets)."""

from __future__ import annotations

from .metrics import SUMMARY_KEYS


def summary_aurocs(results: dict[str, dict]) -> dict[str, float]:
    """{summary: AUROC} of ``metrics.evaluate_scores``' result (the encoding-matched summaries): what ``dmr score``
    chooses its default detector by."""
    return {key: results[key]["AUROC"] for key in SUMMARY_KEYS if key in results}
