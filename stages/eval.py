"""Stage eval: DMR's OOD metrics on ID test vs every OOD test set, its per-image scores, ROC and histogram plots,
and the score threshold that new images are judged by (``dmr_core.detectors.threshold``: OOD when score > threshold,
95 % of ID test images kept), with the thresholds at the other shares kept (``eval.keep_rates``) and what passes each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dmr_core.data.artifacts import atomic_output, save_zarr, write_json
from dmr_core.data.encoding import is_as_stored
from dmr_core.detectors.dmr import evaluate_head
from dmr_core.detectors.threshold import ood_threshold, operating_points, threshold_attrs, thresholds_of
from dmr_core.evaluation.metrics import roc_points
from dmr_core.evaluation.summary import summary_aurocs
from dmr_core.nets.rejection_head import load_head
from dmr_core.params import Params
from dmr_core.plotting import save_roc_plot, save_score_histograms

from dmr_core.data.layout import ood_features, open_features
from dmr_core.runtime.stage import run


def main(params: Params, head: Path, features: Path, scores: Path, metrics: Path, plots: Path) -> None:
    loaded = load_head(head)
    rejection_head, feature = loaded.head, loaded.feature
    group = open_features(features)
    result = evaluate_head(rejection_head, group["id_test"][feature], ood_features(group, feature))
    threshold = threshold_attrs(ood_threshold(result.id_scores))
    points = operating_points(result.id_scores, {name: values for name, values in result.ood_scores.items()
                                                 if not is_as_stored(name)}, params.eval.keep_rates)
    save_zarr(scores, {"id_test": result.id_scores, "ood": result.ood_scores},
              # the head's digest ties these thresholds to the head they belong to (checked by `dmr score`)
              attrs={"ood_sets": list(result.ood_scores), "feature": feature, "head_sha256": loaded.sha256, **threshold,
                     "thresholds": thresholds_of(points),
                      "summary": summary_aurocs(result.metrics)})
    write_json(metrics, {"method": "DMR (rejection head)", "feature": feature, **threshold, **result.metrics,
                         "operating_points": points})
    for name, m in result.metrics.items():
        print(f"{name:>18}: AUROC {m['AUROC']:6.2f}  AUPR-OUT {m['AUPR-OUT']:6.2f}  FPR95 {m['FPR95TPR']:6.2f}")
    print(f"threshold {threshold['threshold']:.4f}: {threshold['threshold_rule']}")

    curves = {}
    with atomic_output(plots / "roc") as roc_dir:
        roc_dir.mkdir()
        for name, values in result.ood_scores.items():
            fpr, tpr = roc_points(result.id_scores, values, params.eval.roc_points)
            pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}).to_csv(roc_dir / f"{name}.csv", index=False)
            if not is_as_stored(name):  # the pictures show the sets as scored; the as-stored curves are in roc/
                curves[name] = (fpr, tpr, result.metrics[name]["AUROC"])
    save_roc_plot(curves, plots / "roc.png", "DMR rejection head: ROC per OOD set")
    matched = {name: values for name, values in result.ood_scores.items() if not is_as_stored(name)}
    save_score_histograms(result.id_scores, matched, plots / "score_histograms.png",
                          params.eval.histogram_bins, "DMR rejection-head logit (higher = more OOD)")


if __name__ == "__main__":
    run(main, "eval")
