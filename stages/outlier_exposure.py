"""Stage outlier_exposure: the paper's Table 2 OE row, a copy of the classifier F fine-tuned with Outlier Exposure on
the user's outlier set (``baselines.oe_outliers``) and scored by its maximum softmax probability on ID test and every
OOD test set. Without an outlier set it only records that the row was not run.

The outliers are refused before any training when one of their images is identical, after the resize rule, to an
image of the ID test split or of an OOD test set (the params already refuse a path that is or holds a test set)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dmr_core.data.artifacts import write_json
from dmr_core.data.datasets import load_ood_set, set_name
from dmr_core.data.leakage import refuse_test_images
from dmr_core.evaluation.metrics import evaluate_scores
from dmr_core.nets.classifier import load_classifier
from dmr_core.params import Params
from dmr_core.training.classifier import accuracy
from dmr_core.training.outlier_exposure import (
    OUTLIERS_PER_ID_IMAGE,
    OutlierExposureConfig,
    finetune_with_outliers,
    msp_scores,
    not_run,
)

from dmr_core.data.layout import id_split_path, ood_set_path, open_image_set, read_image_set, read_sets_index
from dmr_core.runtime.stage import run


def main(params: Params, datasets: Path, classifier: Path, metrics: Path) -> None:
    p = params.baselines
    if p.oe_outliers is None:
        write_json(metrics, not_run())
        print(f"outlier exposure: not run ({not_run()['reason']})")
        return
    test_x, test_y, _ = open_image_set(id_split_path(datasets, "test"))
    outliers = load_ood_set(p.oe_outliers, max_images=p.oe_max_outliers, seed=p.oe_seed, size=test_x.shape[1])
    ood = {name: open_image_set(ood_set_path(datasets, name))[0] for name in read_sets_index(datasets)["ood_sets"]}
    refuse_test_images(outliers.images, {"id_test": test_x, **ood}, f"baselines.oe_outliers = {p.oe_outliers!r}")
    train_x, train_y, _ = read_image_set(id_split_path(datasets, "train"))
    model = load_classifier(classifier)
    config = OutlierExposureConfig(epochs=p.oe_epochs, batch_size=p.oe_batch_size, lr=p.oe_lr, alpha=p.oe_alpha,
                                   seed=p.oe_seed)
    print(f"outlier exposure: {len(train_x):,} ID training images, {len(outliers.images):,} outliers from "
          f"{p.oe_outliers}")
    tuned, history = finetune_with_outliers(model, train_x, train_y, outliers.images, config)
    results = evaluate_scores(msp_scores(tuned, test_x), {name: msp_scores(tuned, x) for name, x in ood.items()})
    before, after = accuracy(model, test_x, test_y), accuracy(tuned, test_x, test_y)
    print(f"outlier exposure: mean AUROC {results['mean']['AUROC']:.2f}; ID test accuracy {after:.2f}% "
          f"(F: {before:.2f}%)")
    write_json(metrics, {
        "run": True, "method": "OE", "score": "MSP of the fine-tuned copy of F",
        # what it trained on: DVC does not hash a folder named in params, so the images' hash is kept here
        "outliers": {"path": p.oe_outliers, "name": set_name(p.oe_outliers), "images": len(outliers.images),
                     "skipped": outliers.skipped,
                     "images_sha256": hashlib.sha256(outliers.images.tobytes()).hexdigest()},
        "epochs": p.oe_epochs, "alpha": p.oe_alpha, "outliers_per_id_image": OUTLIERS_PER_ID_IMAGE,
        "train_loss_per_epoch": [round(v, 4) for v in history],
        "test_accuracy": round(after, 3), "test_accuracy_before": round(before, 3),
        **results,
    })


if __name__ == "__main__":
    run(main, "outlier_exposure")
