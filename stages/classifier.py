"""Stage classifier: the classifier F (pretrained initialisation + fine-tuning, or from scratch)."""

from __future__ import annotations

from pathlib import Path

from dmr_core.data.artifacts import atomic_output, write_json
from dmr_core.nets.classifier import build_classifier, load_pretrained, save_classifier
from dmr_core.params import Params
from dmr_core.training.classifier import ClassifierTrainingConfig, accuracy, train_classifier
from dmr_core.training.loop import seed_everything

from ._common import read_image_set, run


def main(params: Params, train: Path, test: Path, out: Path, metrics: Path) -> None:
    p = params.classifier
    train_x, train_y, _ = read_image_set(train)
    test_x, test_y, _ = read_image_set(test)
    seed_everything(p.seed)  # a from-scratch initialisation draws from the global RNG
    model = load_pretrained(p.arch) if p.init == "pretrained" else build_classifier(p.arch)
    before = accuracy(model, test_x, test_y) if p.init == "pretrained" else None
    history = train_classifier(model, train_x, train_y, p.to(ClassifierTrainingConfig))
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"classifier {p.arch}: test accuracy {test_accuracy:.2f}%"
          + (f" (before fine-tuning {before:.2f}%)" if before is not None else ""))
    with atomic_output(out) as tmp:
        save_classifier(model, p.arch, tmp, extra={"test_accuracy": test_accuracy})
    write_json(metrics, {
        "arch": p.arch, "init": p.init, "test_accuracy": round(test_accuracy, 3),
        "test_accuracy_before_training": None if before is None else round(before, 3),
        "train_loss_per_epoch": [round(v, 4) for v in history],
    })


if __name__ == "__main__":
    run(main, "classifier")
