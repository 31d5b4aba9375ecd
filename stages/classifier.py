"""Stage classifier: the CIFAR-10 classifier F (pretrained init + fine-tuning, or from scratch)."""

from __future__ import annotations

from dmr_core.artifacts import atomic_output, write_json
from dmr_core.classifier import build_classifier, load_pretrained, save_classifier
from dmr_core.classifier_training import accuracy, train_classifier
from dmr_core.params import Params
from dmr_core.training import seed_everything

from ._common import CLASSIFIER, METRICS, id_split_path, read_image_set, run


def main(params: Params) -> None:
    p = params.classifier
    train_x, train_y, _ = read_image_set(id_split_path("train"))
    test_x, test_y, _ = read_image_set(id_split_path("test"))
    seed_everything(p.seed)  # a from-scratch initialisation draws from the global RNG
    model = load_pretrained(p.arch) if p.init == "pretrained" else build_classifier(p.arch)
    before = accuracy(model, test_x, test_y) if p.init == "pretrained" else None
    history = train_classifier(
        model, train_x, train_y, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, momentum=p.momentum,
        weight_decay=p.weight_decay, seed=p.seed,
    )
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"classifier {p.arch}: test accuracy {test_accuracy:.2f}%"
          + (f" (before fine-tuning {before:.2f}%)" if before is not None else ""))
    with atomic_output(CLASSIFIER) as tmp:
        save_classifier(model, p.arch, tmp, extra={"test_accuracy": test_accuracy})
    write_json(METRICS / "classifier.json", {
        "arch": p.arch, "init": p.init, "test_accuracy": round(test_accuracy, 3),
        "test_accuracy_before_training": None if before is None else round(before, 3),
        "train_loss_per_epoch": [round(v, 4) for v in history],
    })


if __name__ == "__main__":
    run(main, "classifier")
