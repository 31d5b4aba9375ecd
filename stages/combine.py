"""Stage combine: DMR's score plus a post-hoc detector's score (``combine.detector``), each standardised on
ID-train scores; its OOD metrics are reported beside DMR's, never instead of them.

Also keeps what scoring new images with the combined score needs (``--scores``): the per-image combined scores,
both standardisations, the detector's name, representation and settings (it is refitted on the ID-train features
when new images are scored, as stage baselines fits it), and the threshold (OOD when score > threshold, 95 % of ID
test images kept)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, save_zarr, write_json
from dmr_core.detectors.combine import CombinedScore
from dmr_core.detectors.dmr import DMRDetector
from dmr_core.detectors.posthoc import DETECTORS, PosthocSettings
from dmr_core.detectors.threshold import ood_threshold, threshold_attrs
from dmr_core.evaluation.metrics import evaluate_scores
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
    rejection_head, feature = load_head(head)
    reference = np.asarray(posthoc["reference_indices"][:])
    dmr_reference = DMRDetector(rejection_head).scores(np.asarray(open_features(features)["id_train"][feature][:])
                                                       [reference])
    ood_sets = list(dmr.attrs["ood_sets"])
    detector_scores = posthoc[name]
    combine = CombinedScore.fit(dmr_reference, np.asarray(detector_scores["id_train_reference"][:]))
    id_test = combine(np.asarray(dmr["id_test"][:]), np.asarray(detector_scores["id_test"][:]))
    ood = {s: combine(np.asarray(dmr["ood"][s][:]), np.asarray(detector_scores[s][:])) for s in ood_sets}
    results = evaluate_scores(id_test, ood)
    threshold = threshold_attrs(ood_threshold(id_test))
    method = f"DMR + {name}"
    save_zarr(scores, {"id_test": id_test, "ood": ood}, attrs={
        "method": method, "detector": name, "representation": DETECTORS[name].representation,
        "settings": asdict(params.baselines.to(PosthocSettings)), "feature": feature, "ood_sets": ood_sets,
        **combine.to_attrs(), **threshold})
    write_json(metrics, {"method": method, **threshold, **results})
    print(f"{method}: mean AUROC {results['mean']['AUROC']:.2f}; threshold {threshold['threshold']:.4f}")


if __name__ == "__main__":
    run(main, "combine")
