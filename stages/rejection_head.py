"""Stage rejection_head: train B on frozen-classifier features, ID train (0) vs synthesised OOD (1)."""

from __future__ import annotations

import numpy as np
import torch

from dmr_core.artifacts import atomic_output, open_zarr, write_json
from dmr_core.classifier import load_classifier
from dmr_core.features import extract_features
from dmr_core.params import Params
from dmr_core.rejection import save_head, train_rejection_head

from ._common import CLASSIFIER, METRICS, OOD_SYNTH, REJECTION_HEAD, read_features, run


def main(params: Params) -> None:
    p = params.head
    id_features = read_features("id_train", p.feature)
    synth_images = np.asarray(open_zarr(OOD_SYNTH, "the synthesised OOD set (stage ood_synth)")["images"][:])
    synth_features = extract_features(load_classifier(CLASSIFIER), synth_images, params.features.batch_size,
                                      desc="synth features")[p.feature]
    head, history = train_rejection_head(
        id_features, synth_features, hidden=p.hidden, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
        momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay, schedule=p.schedule, seed=p.seed,
        input_dropout=p.input_dropout,
    )
    with torch.inference_mode():
        id_rate = float((head(torch.from_numpy(id_features)) > 0).float().mean()) * 100
        synth_rate = float((head(torch.from_numpy(synth_features)) > 0).float().mean()) * 100
    print(f"rejection head: final loss {history[-1]:.4f}; flags {id_rate:.1f}% of ID train, "
          f"{synth_rate:.1f}% of synthesised OOD")
    with atomic_output(REJECTION_HEAD) as tmp:
        save_head(head, p.feature, tmp)
    write_json(METRICS / "rejection_head.json", {
        "feature": p.feature, "in_features": int(id_features.shape[1]),
        "train_loss_per_epoch": [round(v, 5) for v in history],
        "id_train_flagged_pct": round(id_rate, 3), "synth_flagged_pct": round(synth_rate, 3),
    })


if __name__ == "__main__":
    run(main, "rejection_head")
