"""Stage eval: DMR's OOD metrics on CIFAR-10 test vs every OOD test set, plus ROC and histogram plots.

With ``eval.combine_with`` set, also the metrics of DMR + that post-hoc detector (dmr_core/combine.py), as a
separate entry ``combined`` of metrics/eval.json.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from dmr_core.artifacts import atomic_output, open_zarr, write_json
from dmr_core.combine import combined_scores
from dmr_core.errors import ParamsError
from dmr_core.evaluation import evaluate_scores, roc_points
from dmr_core.params import Params
from dmr_core.plotting import save_roc_plot, save_score_histograms
from dmr_core.rejection import DMRDetector, load_head

from ._common import METRICS, PLOTS, POSTHOC_SCORES, REJECTION_HEAD, feature_ood_sets, read_features, run


def combine(detector_name: str, dmr_id: np.ndarray, dmr_ood: dict[str, np.ndarray],
            dmr_train_scores: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Metrics of DMR + the named post-hoc detector, whose scores (and ID-train reference rows) the baselines
    stage kept; ``dmr_train_scores(rows)`` gives DMR's scores of those ID-train rows."""
    group = open_zarr(POSTHOC_SCORES, "the post-hoc scores (stage baselines)")
    if detector_name not in group:
        raise ParamsError(f"eval.combine_with = {detector_name!r} is not among the scored detectors; add it to baselines.detectors")
    posthoc = group[detector_name]
    ref = np.asarray(posthoc["id_train_reference"][:])
    dmr_reference = dmr_train_scores(np.asarray(group["reference_indices"][:]))
    id_scores = combined_scores(dmr_id, np.asarray(posthoc["id_test"][:]), dmr_reference, ref)
    ood = {name: combined_scores(values, np.asarray(posthoc[name][:]), dmr_reference, ref)
           for name, values in dmr_ood.items()}
    return {"method": f"DMR + {detector_name}", **evaluate_scores(id_scores, ood)}


def main(params: Params) -> None:
    head, feature = load_head(REJECTION_HEAD)
    detector = DMRDetector(head)

    def scores(set_key: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        return detector.predict_features(torch.from_numpy(read_features(set_key, feature)[rows])).numpy()

    id_scores = scores("id_test")
    ood_scores = {name: scores(f"ood/{name}") for name in feature_ood_sets()}
    results = evaluate_scores(id_scores, ood_scores)
    payload = {"method": "DMR (rejection head)", "feature": feature, **results}
    if params.eval.combine_with != "none":
        payload["combined"] = combine(params.eval.combine_with, id_scores, ood_scores,
                                      lambda rows: scores("id_train", rows))
    write_json(METRICS / "eval.json", payload)
    for name, m in results.items():
        print(f"{name:>18}: AUROC {m['AUROC']:6.2f}  AUPR-OUT {m['AUPR-OUT']:6.2f}  FPR95 {m['FPR95TPR']:6.2f}")
    if "combined" in payload:
        print(f"{payload['combined']['method']}: mean AUROC {payload['combined']['mean']['AUROC']:.2f}")

    curves = {}
    with atomic_output(PLOTS / "eval" / "roc") as roc_dir:
        roc_dir.mkdir()
        for name, values in ood_scores.items():
            fpr, tpr = roc_points(id_scores, values, params.eval.roc_points)
            pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}).to_csv(roc_dir / f"{name}.csv", index=False)
            curves[name] = (fpr, tpr, results[name]["AUROC"])
    save_roc_plot(curves, PLOTS / "eval" / "roc.png", "DMR rejection head: ROC per OOD set")
    save_score_histograms(id_scores, ood_scores, PLOTS / "eval" / "score_histograms.png",
                          params.eval.histogram_bins, "DMR rejection-head logit (higher = more OOD)")


if __name__ == "__main__":
    run(main, "eval")
