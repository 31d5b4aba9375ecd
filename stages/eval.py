"""Stage eval: DMR's OOD metrics on CIFAR-10 test vs every OOD test set, plus ROC and histogram plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dmr_core.artifacts import atomic_output, write_json
from dmr_core.evaluation import evaluate_scores, roc_points
from dmr_core.params import Params
from dmr_core.plotting import save_roc_plot, save_score_histograms
from dmr_core.rejection import DMRDetector, load_head

from ._common import METRICS, PLOTS, REJECTION_HEAD, feature_ood_sets, read_features, run


def main(params: Params) -> None:
    head, feature = load_head(REJECTION_HEAD)
    detector = DMRDetector(head)

    def scores(set_key: str) -> np.ndarray:
        return detector.predict_features(torch.from_numpy(read_features(set_key, feature))).numpy()

    id_scores = scores("id_test")
    ood_scores = {name: scores(f"ood/{name}") for name in feature_ood_sets()}
    results = evaluate_scores(id_scores, ood_scores)
    write_json(METRICS / "eval.json", {"method": "DMR (rejection head)", "feature": feature, **results})
    for name, m in results.items():
        print(f"{name:>18}: AUROC {m['AUROC']:6.2f}  AUPR-OUT {m['AUPR-OUT']:6.2f}  FPR95 {m['FPR95TPR']:6.2f}")

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
