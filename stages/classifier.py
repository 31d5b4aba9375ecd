"""Stage classifier: the classifier F (pretrained initialisation + fine-tuning, from scratch, or the user's own
checkpoint, used as given with classifier.epochs: 0), with as many classes as the ID data has."""

from __future__ import annotations

from pathlib import Path

from dmr_core.data.artifacts import atomic_output, write_json
from dmr_core.errors import DataError
from dmr_core.nets.classifier import file_sha256, initial_classifier, save_classifier
from dmr_core.distributed import is_main
from dmr_core.params import Params
from dmr_core.training.classifier import ClassifierTrainingConfig, accuracy, train_classifier
from dmr_core.training.curves import write_curve
from dmr_core.training.loop import seed_everything

from dmr_core.data.layout import open_image_set, read_image_set
from dmr_core.runtime.stage import run


def main(params: Params, train: Path, test: Path, out: Path, metrics: Path, curve: Path) -> None:
    p = params.classifier
    train_x, train_y, attrs = read_image_set(train)
    test_x, test_y, _ = open_image_set(test)
    if not attrs.get("class_names"):
        raise DataError(f"{train} records no class_names; rebuild the datasets with `dvc repro data`")
    class_names = [str(name) for name in attrs["class_names"]]
    if len(train_y) and int(max(train_y.max(), test_y.max())) >= len(class_names):
        raise DataError(f"labels of {train} or {test} exceed its {len(class_names)} class_names; rebuild the "
                        "datasets with `dvc repro data`")
    # the checkpoint's content, recorded with the result (the models/ folder dependency is what re-runs the stage)
    provenance = ({"checkpoint": p.checkpoint, "checkpoint_sha256": file_sha256(p.checkpoint)}
                  if p.init == "checkpoint" and p.checkpoint is not None else {})
    seed_everything(p.seed)  # a from-scratch initialisation draws from the global RNG
    model = initial_classifier(p.arch, p.init, len(class_names), class_names, p.checkpoint, p.dropout,
                               image_size=train_x.shape[1], input_size=p.input_size)
    before = accuracy(model, test_x, test_y) if p.init != "scratch" else None
    history = train_classifier(model, train_x, train_y, p.to(ClassifierTrainingConfig))
    if not is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        return
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"classifier {p.arch}: test accuracy {test_accuracy:.2f}%"
          + (f" (before training {before:.2f}%)" if before is not None else ""))
    with atomic_output(out) as tmp:
        save_classifier(model, p.arch, tmp, extra={"test_accuracy": test_accuracy, **provenance},
                        class_names=class_names)
    write_json(metrics, {
        "arch": p.arch, "init": p.init, "test_accuracy": round(test_accuracy, 3),
        "test_accuracy_before_training": None if before is None else round(before, 3),
        "train_loss_per_epoch": [round(v, 4) for v in history.loss], **provenance,
    })
    write_curve(curve, history)


if __name__ == "__main__":
    run(main, "classifier")
