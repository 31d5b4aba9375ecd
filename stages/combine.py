"""Stage combine: DMR's score plus a post-hoc detector's score (``combine.detector``), each standardised on
ID-train scores; its OOD metrics are reported beside DMR's, never instead of them.

Also keeps everything scoring new images with the combined score needs (``--scores``): the per-image combined
scores, both standardisations, the detector's name, representation and settings, the arrays its fit keeps (group
``detector_state``: for KNN the unit-normalised ID-train penultimate vectors, as pytorch-ood's KNN indexes them;
detectors without a servable form are refitted when new images are scored), and the thresholds (OOD when score >
threshold; 95 % of ID test images kept, and the other ``eval.keep_rates``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, save_zarr, write_json
from dmr_core.detectors.combine import CombinedScore
from dmr_core.detectors.dmr import DMRDetector
from dmr_core.data.encoding import is_as_stored
from dmr_core.detectors.posthoc import DETECTORS, PosthocSettings
from dmr_core.detectors.threshold import ood_threshold, operating_points, threshold_attrs, thresholds_of
from dmr_core.evaluation.metrics import evaluate_scores
from dmr_core.evaluation.summary import summary_aurocs
from dmr_core.nets.rejection_head import load_head
from dmr_core.params import Params

from dmr_core.data.layout import open_features
from dmr_core.runtime.stage import run


def main(params: Params, dmr_scores: Path, posthoc_scores: Path, head: Path, features: Path, scores: Path,
         metrics: Path) -> None:
    name = params.combine.detector
    if name == "none":
        save_zarr(scores, {}, attrs={"method": None})
        write_json(metrics, {"method": None, "note": "combine.detector is none: no combined score"})
        return
    dmr = open_zarr(dmr_scores, "DMR's scores (stage eval)")
    posthoc = open_zarr(posthoc_scores, "the post-hoc scores (stage baselines)")
    loaded = load_head(head)
    rejection_head, feature = loaded.head, loaded.feature
    reference = np.asarray(posthoc["reference_indices"][:])
    id_train = open_features(features)["id_train"]
    dmr_reference = DMRDetector(rejection_head).scores(np.asarray(id_train[feature][:])[reference])
    ood_sets = list(dmr.attrs["ood_sets"])
    detector_scores = posthoc[name]
    combine = CombinedScore.fit(dmr_reference, np.asarray(detector_scores["id_train_reference"][:]))
    id_test = combine(np.asarray(dmr["id_test"][:]), np.asarray(detector_scores["id_test"][:]))
    ood = {s: combine(np.asarray(dmr["ood"][s][:]), np.asarray(detector_scores[s][:])) for s in ood_sets}
    results = evaluate_scores(id_test, ood)
    threshold = threshold_attrs(ood_threshold(id_test))
    points = operating_points(id_test, {s: v for s, v in ood.items() if not is_as_stored(s)}, params.eval.keep_rates)
    settings = params.baselines.to(PosthocSettings)
    servable = DETECTORS[name].servable
    representation = DETECTORS[name].representation
    state = {} if servable is None else servable.state({representation: np.asarray(id_train[representation][:])},
                                                       settings)
    method = f"DMR + {name}"
    save_zarr(scores, {"id_test": id_test, "ood": ood, "detector_state": state}, attrs={
        "method": method, "detector": name, "representation": representation, "settings": asdict(settings),
        "feature": feature, "head_sha256": loaded.sha256, "ood_sets": ood_sets, "servable": servable is not None, **combine.to_attrs(),
        **threshold, "thresholds": thresholds_of(points),
        "summary": summary_aurocs(results)})
    write_json(metrics, {"method": method, **threshold, **results, "operating_points": points})
    print(f"{method}: mean AUROC {results['mean']['AUROC']:.2f}; threshold {threshold['threshold']:.4f}")


if __name__ == "__main__":
    run(main, "combine")
