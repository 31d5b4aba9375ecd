"""Stage combine: DMR's score plus a post-hoc detector's score (``combine.detector``), each standardised on
ID-train scores; its OOD metrics are reported beside DMR's, never instead of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, write_json
from dmr_core.detectors.combine import combined_metrics
from dmr_core.detectors.dmr import DMRDetector
from dmr_core.nets.rejection_head import load_head
from dmr_core.params import Params

from ._common import open_features, run


def main(params: Params, dmr_scores: Path, posthoc_scores: Path, head: Path, features: Path, metrics: Path) -> None:
    name = params.combine.detector
    if name == "none":
        write_json(metrics, {"method": None, "note": "combine.detector is none: no combined score"})
        return
    dmr = open_zarr(dmr_scores, "DMR's scores (stage eval)")
    posthoc = open_zarr(posthoc_scores, "the post-hoc scores (stage baselines)")
    rejection_head, feature = load_head(head)
    reference = np.asarray(posthoc["reference_indices"][:])
    dmr_reference = DMRDetector(rejection_head).scores(np.asarray(open_features(features)["id_train"][feature][:])
                                                       [reference])
    ood_sets = list(dmr.attrs["ood_sets"])
    scores = posthoc[name]
    results = combined_metrics(
        np.asarray(dmr["id_test"][:]), {s: np.asarray(dmr["ood"][s][:]) for s in ood_sets}, dmr_reference,
        np.asarray(scores["id_test"][:]), {s: np.asarray(scores[s][:]) for s in ood_sets},
        np.asarray(scores["id_train_reference"][:]))
    write_json(metrics, {"method": f"DMR + {name}", **results})
    print(f"DMR + {name}: mean AUROC {results['mean']['AUROC']:.2f}")


if __name__ == "__main__":
    run(main, "combine")
