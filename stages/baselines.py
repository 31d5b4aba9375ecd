"""Stage baselines: every post-hoc detector of the detector table on the frozen classifier.

Also keeps every detector's per-image scores (ID test, each OOD set, and a seeded ID-train reference subset that
sets the scale when a score is combined with DMR's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, save_zarr, write_json
from dmr_core.detectors.combine import reference_rows
from dmr_core.detectors.posthoc import (
    PosthocSettings,
    RowSelection,
    ScoringSet,
    evaluate_detectors,
    fit_detectors,
    score_sets,
)
from dmr_core.nets.classifier import load_classifier
from dmr_core.nets.features import REPRESENTATIONS
from dmr_core.params import Params

from dmr_core.data.layout import id_split_path, ood_set_path, open_features
from dmr_core.runtime.stage import run


def main(params: Params, datasets: Path, classifier: Path, features: Path, scores: Path, metrics: Path) -> None:
    p = params.baselines
    group = open_features(features)
    ood_sets = list(group.attrs["ood_sets"])
    train = {r: np.asarray(group["id_train"][r][:]) for r in REPRESENTATIONS}
    model = load_classifier(classifier, params.features.layer, params.features.max_grid)
    detectors = fit_detectors(model, train, np.asarray(group["id_train"]["labels"][:]), p.to(PosthocSettings),
                              tuple(p.detectors))
    reference = reference_rows(len(train["logits"]), p.reference_images, p.reference_seed)

    def images(path: Path):
        return open_zarr(path, "the datasets (stage data)")["images"]

    sets = {"id_test": ScoringSet(group["id_test"], images(id_split_path(datasets, "test")))}
    sets.update({name: ScoringSet(group[f"ood/{name}"], images(ood_set_path(datasets, name))) for name in ood_sets})
    sets["id_train_reference"] = ScoringSet({r: train[r][reference] for r in REPRESENTATIONS},
                                            RowSelection(images(id_split_path(datasets, "train")), reference))
    del train  # the fitted detectors keep what they need; the reference rows are copies
    scored, seconds = score_sets(detectors, sets, p.batch_size)
    save_zarr(scores, {"reference_indices": reference.astype(np.int64), **scored})
    results = evaluate_detectors(scored, ood_sets)
    for name, result in results.items():
        print(f"{name:>12}: mean AUROC {result['mean']['AUROC']:6.2f}  ({seconds[name]:.1f} s)")
    write_json(metrics, {"fitted_on": "CIFAR-10 train", "detectors": results})


if __name__ == "__main__":
    run(main, "baselines")
