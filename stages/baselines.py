"""Stage baselines: every pytorch-ood post-hoc detector on the frozen classifier → metrics/baselines.json.

Also keeps every detector's per-image scores (ID test, each OOD set, and a fixed ID-train reference subset
that sets the scale when a score is combined with DMR's) in data/posthoc_scores.zarr.
"""

from __future__ import annotations

import time

import numpy as np
import zarr

from dmr_core.artifacts import atomic_output, write_json, write_zarr_arrays
from dmr_core.classifier import load_classifier
from dmr_core.evaluation import evaluate_scores
from dmr_core.params import Params
from dmr_core.posthoc import PosthocSettings, fit_detectors, score_set

from ._common import (
    CLASSIFIER,
    METRICS,
    POSTHOC_SCORES,
    feature_ood_sets,
    id_split_path,
    ood_set_path,
    read_features,
    read_image_set,
    run,
)

REPRESENTATIONS = ("logits", "penultimate", "feature_map")
REFERENCE_IMAGES = 2000  # ID-train images whose scores set each detector's scale for combination


def main(params: Params) -> None:
    p = params.baselines
    model = load_classifier(CLASSIFIER)
    settings = PosthocSettings(vim_dim=p.vim_dim, knn_k=p.knn_k, react_percentile=p.react_percentile,
                               dice_p=p.dice_p, ash_percentile=p.ash_percentile, odin_eps=p.odin_eps,
                               odin_temperature=p.odin_temperature)
    train = {r: read_features("id_train", r) for r in REPRESENTATIONS}
    detectors = fit_detectors(model, train, read_features("id_train", "labels"), settings, tuple(p.detectors))
    needed = {d.representation for d in detectors}
    n_train = len(train["logits"])
    reference = np.sort(np.random.default_rng(0).permutation(n_train)[:min(REFERENCE_IMAGES, n_train)])
    reference_reps = {r: train[r][reference] for r in needed if r != "images"}  # rows of what is in memory
    del train
    sets = {"id_test": ("id_test", id_split_path("test"))}
    sets.update({name: (f"ood/{name}", ood_set_path(name)) for name in feature_ood_sets()})
    sets["id_train_reference"] = ("id_train", id_split_path("train"))
    scores: dict[str, dict[str, object]] = {d.name: {} for d in detectors}
    seconds = {d.name: 0.0 for d in detectors}
    for set_name, (feature_key, image_path) in sets.items():
        is_reference = set_name == "id_train_reference"
        reps = reference_reps if is_reference else {r: read_features(feature_key, r) for r in needed if r != "images"}
        images = read_image_set(image_path)[0][reference if is_reference else slice(None)] if "images" in needed else None
        for det in detectors:
            start = time.perf_counter()
            scores[det.name][set_name] = score_set(det, reps, images, model.feature_channels, p.batch_size)
            seconds[det.name] += time.perf_counter() - start
    with atomic_output(POSTHOC_SCORES) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        write_zarr_arrays(root, {"reference_indices": reference.astype(np.int64)})
        for det in detectors:
            write_zarr_arrays(root.require_group(det.name), {k: np.asarray(v) for k, v in scores[det.name].items()})
    results = {}
    for det in detectors:
        per_set = dict(scores[det.name])
        per_set.pop("id_train_reference")
        id_scores = per_set.pop("id_test")
        results[det.name] = evaluate_scores(id_scores, per_set)
        print(f"{det.name:>12}: mean AUROC {results[det.name]['mean']['AUROC']:6.2f}  ({seconds[det.name]:.1f} s)")
    write_json(METRICS / "baselines.json", {"fitted_on": "CIFAR-10 train", "detectors": results})


if __name__ == "__main__":
    run(main, "baselines")
