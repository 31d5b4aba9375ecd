"""Stage rejection_head: B trained on frozen-classifier features, ID train (0) vs synthesised OOD (1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dmr_core.data.artifacts import atomic_output, open_zarr, write_json
from dmr_core.nets.classifier import load_classifier_with_digest
from dmr_core.nets.rejection_head import save_head
from dmr_core.distributed import is_main
from dmr_core.params import Params
from dmr_core.training.curves import write_curve
from dmr_core.training.head import HeadConfig, train_head_on_images

from dmr_core.data.layout import open_features
from dmr_core.runtime.stage import run


def main(params: Params, features: Path, ood_synth: Path, classifier: Path, out: Path, metrics: Path,
         curve: Path) -> None:
    p = params.head
    id_features = np.asarray(open_features(features)["id_train"][p.feature][:])
    synth_images = open_zarr(ood_synth, "the synthesised OOD set (stage ood_synth)")["images"]
    model, classifier_sha256 = load_classifier_with_digest(classifier, params.features.layer,
                                                           params.features.max_grid)
    trained = train_head_on_images(model, id_features, synth_images, p.feature, p.to(HeadConfig),
                                   params.features.batch_size)
    if not is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        return
    with torch.inference_mode():
        id_rate = float((trained.head(torch.from_numpy(id_features)) > 0).float().mean()) * 100
        synth_rate = float((trained.head(torch.from_numpy(trained.synth_features)) > 0).float().mean()) * 100
    print(f"rejection head: final loss {trained.history.loss[-1]:.4f}; flags {id_rate:.1f}% of ID train, "
          f"{synth_rate:.1f}% of synthesised OOD")
    with atomic_output(out) as tmp:
        # the head carries what it was made from, so that every reader builds F as it was trained on
        save_head(trained.head, p.feature, tmp, feature_layer=params.features.layer,
                  classifier_sha256=classifier_sha256, max_grid=params.features.max_grid)
    write_json(metrics, {
        "feature": p.feature, "in_features": trained.head.config["in_features"],
        "train_loss_per_epoch": [round(v, 5) for v in trained.history.loss],
        "id_train_flagged_pct": round(id_rate, 3), "synth_flagged_pct": round(synth_rate, 3),
    })
    write_curve(curve, trained.history)


if __name__ == "__main__":
    run(main, "rejection_head")
