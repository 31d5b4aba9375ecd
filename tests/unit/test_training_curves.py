"""Training curves: the loop's per-epoch loss and accuracy, and the CSV rows DVC plots read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import ROOT

from dmr_core.nets.classifier import build_classifier
from dmr_core.training.classifier import ClassifierTrainingConfig, train_classifier
from dmr_core.training.curves import curve_table, write_curve
from dmr_core.training.loop import BatchLoss, History, run_epochs


def _loop(batches: list[tuple[int, int | None]], epochs: int) -> History:
    """run_epochs over batches given as (size, correct or None), with a loss of 1 + step index / 10."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)

    def batch_loss(batch, epoch: int) -> BatchLoss:
        step, (size, correct) = batch
        return BatchLoss(weight.sum() + 1 + step / 10, size, correct=None if correct is None else torch.tensor(correct))

    return run_epochs(list(enumerate(batches)), batch_loss, optimizer, scheduler, epochs=epochs, what="test")


def test_run_epochs_weights_loss_and_accuracy_by_batch_size():
    history = _loop([(4, 3), (4, 4), (2, 0)], epochs=2)
    # loss 1.0, 1.1, 1.2 on batches of 4, 4, 2; 7 of 10 samples right
    assert history.loss == pytest.approx([(4 * 1.0 + 4 * 1.1 + 2 * 1.2) / 10] * 2)
    assert history.accuracy == pytest.approx([70.0, 70.0])


def test_run_epochs_has_no_accuracy_when_the_batches_count_none():
    history = _loop([(4, None), (4, None)], epochs=3)
    assert len(history.loss) == 3 and history.accuracy is None


def test_curve_rows_are_one_per_epoch_from_one():
    table = curve_table(History([0.9, 0.5, 0.25], [40.0, 75.5, 90.0]))
    assert list(table.columns) == ["epoch", "loss", "accuracy"]
    assert table.to_dict("records") == [{"epoch": 1, "loss": 0.9, "accuracy": 40.0},
                                        {"epoch": 2, "loss": 0.5, "accuracy": 75.5},
                                        {"epoch": 3, "loss": 0.25, "accuracy": 90.0}]
    assert list(curve_table(History([3.0, 2.0])).columns) == ["epoch", "loss"]
    with pytest.raises(ValueError, match="2 accuracy values for 3 epochs"):
        curve_table(History([1.0, 2.0, 3.0], [1.0, 2.0]))


def test_write_curve_writes_the_rows_as_csv(tmp_path):
    path = tmp_path / "plots" / "training" / "head.csv"
    write_curve(path, History([0.693147180, 0.1234567891], [50.0, 99.21875]))
    assert path.read_text().splitlines() == ["epoch,loss,accuracy", "1,0.693147,50", "2,0.123457,99.2188"]
    assert list(tmp_path.joinpath("plots", "training").iterdir()) == [path]  # no temporary file left
    write_curve(path, History([], []))  # a classifier used as given (epochs 0) trains no epoch
    assert path.read_text().splitlines() == ["epoch,loss,accuracy"]
    assert pd.read_csv(path).empty


def test_a_classifier_used_as_given_has_an_empty_curve_with_both_columns():
    images, labels = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4) % 2
    history = train_classifier(build_classifier("resnet20", num_classes=2), images, labels,
                               ClassifierTrainingConfig(epochs=0, batch_size=2, lr=0.1, momentum=0.9, weight_decay=0.0,
                                                        seed=0), device=torch.device("cpu"))
    assert history == History([], [])
    assert list(curve_table(history).columns) == ["epoch", "loss", "accuracy"]


def test_every_training_curve_is_an_uncached_stage_output_with_plots():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plotted: dict[str, set[str]] = {}  # file -> the columns the top-level plots draw from it (x: epoch)
    for entry in pipeline["plots"]:
        for props in (entry.values() if isinstance(entry, dict) else []):
            if isinstance(props, dict) and isinstance(props.get("y"), dict):
                assert props["x"] == "epoch" or not str(next(iter(props["y"]))).startswith("plots/training/")
                for file, field in props["y"].items():
                    plotted.setdefault(file, set()).add(field)
    for stage, columns in {"classifier": {"loss", "accuracy"}, "generator": {"loss"},
                           "rejection_head": {"loss", "accuracy"}}.items():
        curve = f"plots/training/{stage}.csv"
        spec = pipeline["stages"][stage]
        assert {"cache": False} in [entry.get(curve) for entry in spec["outs"] if isinstance(entry, dict)]
        assert f"--curve {curve}" in spec["cmd"]
        assert plotted[curve] == columns
