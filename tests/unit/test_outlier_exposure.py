"""Outlier Exposure (the paper's Table 2 OE row): the loss and the fine-tuning on a tiny colour problem, the guard
that keeps test images out of the outliers (by path in the params, by content in the stage), the stage's two states
and the report's."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf

from dmr_core.data.artifacts import save_zarr
from dmr_core.data.leakage import coinciding_images, path_relation, refuse_test_images
from dmr_core.data.sources import fit_image
from dmr_core.errors import DataError
from dmr_core.evaluation.metrics import METRIC_KEYS
from dmr_core.evaluation.report import OE_NAME, build_table, collect, paper_tables, render_markdown
from dmr_core.nets.classifier import build_classifier, save_classifier
from dmr_core.params import ParamsError, parse_params
from dmr_core.training.classifier import ClassifierTrainingConfig, predict_logits, train_classifier
from dmr_core.training.outlier_exposure import (
    NOT_RUN_REASON,
    OutlierDraws,
    OutlierExposureConfig,
    finetune_with_outliers,
    msp_scores,
    not_run,
    outlier_exposure_loss,
)
from dmr_core.data.layout import id_split_path, ood_set_path, write_sets_index
from helpers import params_with

CPU = torch.device("cpu")


def oe_params(data: dict | None = None, **baselines):
    return parse_params(params_with(data=data or {}, baselines=baselines))


# --- the loss and the fine-tuning -------------------------------------------------------------------------------

def test_the_loss_is_id_cross_entropy_plus_alpha_times_cross_entropy_to_uniform_on_outliers():
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, -1, -1, -1, -1])
    expected = (nnf.cross_entropy(logits[:6], labels[:6])
                + 0.5 * (torch.logsumexp(logits[6:], 1) - logits[6:].mean(1)).mean())
    assert outlier_exposure_loss(logits, labels, 0.5) == pytest.approx(float(expected), rel=1e-6)
    # the outlier term is smallest, α log C, where the prediction on outliers is uniform
    uniform = torch.zeros(4, 4)
    assert outlier_exposure_loss(uniform, torch.full((4,), -1), 0.5) == pytest.approx(0.5 * math.log(4), rel=1e-6)
    assert outlier_exposure_loss(logits[:6], labels[:6], 0.5) == pytest.approx(float(nnf.cross_entropy(logits[:6],
                                                                                                       labels[:6])))


def test_outlier_draws_see_every_outlier_equally_often():
    draws = OutlierDraws(7, torch.Generator().manual_seed(0))
    taken = torch.cat([draws.take(5) for _ in range(7)])  # 35 draws = 5 passes over the 7 outliers
    for one_pass in taken.view(5, 7):
        assert sorted(one_pass.tolist()) == list(range(7))
    assert not torch.equal(taken[:7], taken[7:14])  # each pass in a new order


def colour_images(n: int, rgb: tuple[int, int, int], rng: np.random.Generator, size: int = 8) -> np.ndarray:
    noisy = np.array(rgb, dtype=np.float64) + rng.normal(0, 20, size=(n, size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_problem():
    """Three noisy colours (red, green, blue) as ID classes, a small CNN trained on them with cross-entropy, and
    uniform-noise images as outliers."""
    rng = np.random.default_rng(0)
    images = np.concatenate([colour_images(40, rgb, rng) for rgb in ((220, 30, 30), (30, 220, 30), (30, 30, 220))])
    labels = np.repeat(np.arange(3), 40)
    outliers = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    train_classifier(model, images, labels, ClassifierTrainingConfig(epochs=10, batch_size=16, lr=0.1, momentum=0.9,
                                                                     weight_decay=0.0, seed=0), device=CPU)
    return model, images, labels, outliers


OE = OutlierExposureConfig(epochs=10, batch_size=16, lr=0.05, alpha=0.5, seed=0)


def test_fine_tuning_lowers_the_max_softmax_on_outliers_and_keeps_the_classes(colour_problem):
    model, images, labels, outliers = colour_problem
    before = -msp_scores(model, outliers)
    tuned, history = finetune_with_outliers(model, images, labels, outliers, OE, device=CPU)
    after = -msp_scores(tuned, outliers)
    assert after.mean() < before.mean() - 0.1, (before.mean(), after.mean())
    assert after.mean() < 0.5  # towards the uniform 1/3
    assert (-msp_scores(tuned, images)).mean() > 0.95  # still confident on ID images
    assert (predict_logits(tuned, images).argmax(1).numpy() == labels).mean() == 1.0
    assert len(history) == OE.epochs and history[-1] < history[0]
    np.testing.assert_array_equal(-msp_scores(model, outliers), before)  # the original is left as it was


def test_fine_tuning_is_deterministic_given_the_seed(colour_problem):
    model, images, labels, outliers = colour_problem
    one, h1 = finetune_with_outliers(model, images, labels, outliers, OE, device=CPU)
    two, h2 = finetune_with_outliers(model, images, labels, outliers, OE, device=CPU)
    _, h3 = finetune_with_outliers(model, images, labels, outliers, OutlierExposureConfig(
        epochs=10, batch_size=16, lr=0.05, alpha=0.5, seed=1), device=CPU)
    assert h1 == h2 and h1 != h3
    for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(msp_scores(one, outliers), msp_scores(two, outliers))


# --- the guard: by path (params) ----------------------------------------------------------------------------------

def test_path_relation(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert path_relation(tmp_path / "a", tmp_path / "a") == "is"
    assert path_relation(tmp_path / "link", tmp_path / "a" / ".") == "is"  # another spelling of the same folder
    assert path_relation(tmp_path / "a", tmp_path / "a" / "b") == "contains"
    assert path_relation(tmp_path / "a" / "b", tmp_path / "link") == "lies inside"
    assert path_relation(tmp_path / "a" / "b", tmp_path / "ab") is None
    assert path_relation(tmp_path / "a", tmp_path / "ab") is None  # a common prefix is no containment


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_defaults_do_not_run_oe():
    assert oe_params().baselines.oe_outliers is None


def test_an_outlier_folder_apart_from_the_test_sets_is_accepted(tmp_path):
    ood = folder(tmp_path / "my_ood")
    outliers = folder(tmp_path / "outliers")
    assert oe_params({"ood_sets": [str(ood), "gaussian"]}, oe_outliers=str(outliers)).baselines.oe_outliers == \
        str(outliers)


@pytest.mark.parametrize("where,relation", [
    ("my_ood", "is"), ("my_ood/part", "lies inside"), (".", "contains"),
])
def test_outliers_that_are_hold_or_lie_inside_an_ood_test_set_are_refused(tmp_path, where, relation):
    ood = folder(tmp_path / "sets" / "my_ood")
    folder(ood / "part")
    outliers = (tmp_path / "sets" / where).resolve()
    with pytest.raises(ParamsError) as info:
        oe_params({"ood_sets": [str(ood), "gaussian"]}, oe_outliers=str(outliers))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid params: baselines.oe_outliers = {str(outliers)!r} {relation} the OOD test "
                              "set 'my_ood' of data.ood_sets"), message
    assert "must never train on a test set" in message


def test_another_spelling_of_a_test_set_path_is_refused(tmp_path):
    ood = folder(tmp_path / "my_ood")
    (tmp_path / "alias").symlink_to(ood)
    with pytest.raises(ParamsError, match=r"baselines\.oe_outliers = .*alias' is the OOD test set 'my_ood'"):
        oe_params({"ood_sets": [str(ood)]}, oe_outliers=str(tmp_path / "alias"))


@pytest.mark.parametrize("value", ["svhn", "textures", "cifar100", "./icons", "sets/tinyimagenet_part.tar"])
def test_outliers_named_like_a_built_in_ood_set_are_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    folder(tmp_path / "icons")
    folder(tmp_path / "sets")
    (tmp_path / "sets" / "tinyimagenet_part.tar").write_bytes(b"\0" * 1024)
    name = Path(value).stem
    with pytest.raises(ParamsError, match=rf"^invalid params: baselines\.oe_outliers = '{value}': '{name}' is the "
                                          r"name of a built-in OOD test set"):
        oe_params(oe_outliers=value)


def test_outliers_holding_the_offline_archives_or_inside_the_downloads_are_refused(tmp_path, monkeypatch):
    home = folder(tmp_path / "archives")
    monkeypatch.setenv("DMR_DATA_HOME", str(home))
    with pytest.raises(ParamsError, match=r"oe_outliers = .*archives' contains the OOD test set 'textures_partial' "
                                          r"of data\.ood_sets \(.*textures_partial\.tar\)"):
        oe_params({"ood_sets": "offline"}, oe_outliers=str(home))
    monkeypatch.setenv("DMR_CACHE", str(tmp_path / "cache"))
    inside = folder(tmp_path / "cache" / "downloads" / "dtd")
    with pytest.raises(ParamsError, match=r"dtd' lies inside the download folder of the OOD test sets svhn, "
                                          r"textures, .* of data\.ood_sets \(.*cache/downloads\)"):
        oe_params({"ood_sets": "paper"}, oe_outliers=str(inside))


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def test_outliers_in_the_id_test_split_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            write_png(tmp_path / "my_id" / split / cls / "0.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with pytest.raises(ParamsError, match=r"oe_outliers = .*my_id/test/a' lies inside the ID test split "
                                          r"\(data\.id_set = .*my_id'\)"):
        oe_params({"id_set": str(tmp_path / "my_id"), "ood_sets": ["gaussian"]},
                    oe_outliers=str(tmp_path / "my_id" / "test" / "a"))


@pytest.mark.parametrize("value,expected", [
    ("", r"oe_outliers = '': empty"),
    ("./no/such/folder", r"oe_outliers = './no/such/folder': .*no/such/folder is not a folder or a \.tar archive"),
    ("no_such_name", r"oe_outliers = 'no_such_name': .*is not a folder or a \.tar archive"),
])
def test_outliers_must_be_a_folder_or_tar(value, expected):
    with pytest.raises(ParamsError, match=expected):
        oe_params(oe_outliers=value)


@pytest.mark.parametrize("key,value", [("oe_epochs", 0), ("oe_lr", 0.0), ("oe_alpha", 0.0), ("oe_batch_size", 0),
                                       ("oe_max_outliers", -1), ("oe_seed", -1)])
def test_fine_tuning_settings_are_validated(key, value):
    with pytest.raises(ParamsError, match=rf"^invalid params: baselines\.{key} = {value}: .*than"):
        oe_params(**{key: value})


# --- the guard: by content (the stage) ---------------------------------------------------------------------------

def test_coinciding_images_counts_each_outlier_once():
    rng = np.random.default_rng(0)
    test_a, test_b = (rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8) for _ in range(2))
    fresh = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    candidates = np.concatenate([fresh, test_a[:2], test_b[4:], test_a[:1]])
    found = coinciding_images(candidates, {"a": test_a, "b": test_b, "c": fresh[:0]})
    assert found.total == 4 and found.per_set == {"a": 3, "b": 1}
    off_by_one = fresh.copy()
    off_by_one[0, 0, 0, 0] ^= 1
    assert coinciding_images(off_by_one, {"fresh": fresh}).per_set == {"fresh": 2}
    with pytest.raises(DataError, match=r"^outliers: 4 of its 7 images are identical .* \(a: 3, b: 1\)"):
        refuse_test_images(candidates, {"a": test_a, "b": test_b}, "outliers")
    refuse_test_images(fresh, {"a": test_a, "b": test_b}, "outliers")  # nothing in common: no error


def tiny_datasets(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A data stage output of two classes (12 train, 6 test images) and one OOD set made from big images."""
    big = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    sets = {"id_train": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
            "id_test": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
            "far": np.stack([fit_image(Image.fromarray(b)) for b in big]), "big": big}
    labels = {"id_train": np.arange(12) % 2, "id_test": np.arange(6) % 2}
    for split in ("train", "test"):
        save_zarr(id_split_path(root, split), {"images": sets[f"id_{split}"],
                                               "labels": labels[f"id_{split}"].astype(np.int16)},
                  attrs={"class_names": ["a", "b"]})
    save_zarr(ood_set_path(root, "far"), {"images": sets["far"], "labels": np.full(4, -1, np.int16)})
    write_sets_index(root, ["a", "b"], ["far"])
    return sets


def run_stage(tmp_path: Path, outliers: Path | None, **baselines) -> Path:
    from stages.outlier_exposure import main

    metrics = tmp_path / "metrics" / "outlier_exposure.json"
    main(oe_params(oe_outliers=None if outliers is None else str(outliers), **baselines), tmp_path / "datasets",
         tmp_path / "classifier.pt", metrics)
    return metrics


def test_the_stage_without_outliers_records_that_the_row_was_not_run(tmp_path):
    metrics = run_stage(tmp_path, None)  # no datasets and no classifier: nothing is read
    assert json.loads(metrics.read_text()) == not_run() == {"run": False, "reason": NOT_RUN_REASON}


def test_the_stage_refuses_outliers_identical_to_test_images_before_training(tmp_path):
    rng = np.random.default_rng(1)
    sets = tiny_datasets(tmp_path / "datasets", rng)
    outliers = tmp_path / "outliers"
    write_png(outliers / "new.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    write_png(outliers / "copied" / "test.png", sets["id_test"][3])
    write_png(outliers / "copied" / "ood_big.png", sets["big"][2])  # equal to an OOD image after the resize rule
    with pytest.raises(DataError) as info:
        run_stage(tmp_path, outliers)  # no classifier file: the refusal comes before it is needed
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"baselines.oe_outliers = {str(outliers)!r}: 2 of its 3 images are identical (after "
                              "the 32×32 resize rule) to test images (id_test: 1, far: 1)"), message
    assert not (tmp_path / "metrics").exists()


def test_the_stage_fine_tunes_and_scores_every_set(tmp_path):
    rng = np.random.default_rng(2)
    tiny_datasets(tmp_path / "datasets", rng)
    for i in range(10):
        write_png(tmp_path / "outliers" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    save_classifier(build_classifier("resnet20", 2), "resnet20", tmp_path / "classifier.pt", class_names=["a", "b"])
    metrics = json.loads(run_stage(tmp_path, tmp_path / "outliers", oe_epochs=1, oe_batch_size=4,
                                   oe_max_outliers=8).read_text())
    assert metrics["run"] is True and metrics["method"] == "OE"
    assert metrics["outliers"]["images"] == 8 and metrics["outliers"]["name"] == "outliers"
    assert [k for k, v in metrics.items() if isinstance(v, dict) and "AUROC" in v] == ["far", "mean"]
    assert set(metrics["far"]) == set(METRIC_KEYS) and metrics["mean"] == metrics["far"]
    assert len(metrics["train_loss_per_epoch"]) == 1 and 0 <= metrics["test_accuracy"] <= 100


# --- the report's two states --------------------------------------------------------------------------------------

def per_set(auroc: float) -> dict:
    return {"AUROC": auroc, "AUPR-IN": 50.0, "AUPR-OUT": 60.0, "FPR95TPR": 70.0}


def report(outlier_exposure: dict, id_set: str = "cifar10") -> tuple[str, object]:
    methods = collect({"svhn": per_set(90.0), "mean": per_set(90.0)}, {"detectors": {"MSP": {
        "svhn": per_set(80.0), "mean": per_set(80.0)}}}, {}, None, "dmr_mlm", outlier_exposure)
    table = build_table(methods, paper_tables(), id_set, "wrn40_2")  # the paper's classifier
    data = {"id_set": id_set, "ood": {"svhn": {"source": "download"}}, "id_test": {"images": 100}, "classes": 10}
    return render_markdown(table, data, {"arch": "wrn40_2", "test_accuracy": 90.0}, "", None,
                           outlier_exposure), table


def test_the_report_says_oe_was_not_run():
    markdown, table = report(not_run())
    assert "OE: not run (no outlier set given: set baselines.oe_outliers)" in markdown
    assert OE_NAME not in set(table["method"]) and f"| {OE_NAME} |" not in markdown


def test_the_report_shows_the_oe_row_beside_the_papers_table_2():
    oe = {"run": True, "method": "OE", "outliers": {"name": "my_outliers", "images": 5000}, "epochs": 10,
          "alpha": 0.5, "test_accuracy": 70.5, "test_accuracy_before": 71.0,
          "svhn": per_set(95.0), "mean": per_set(95.0)}
    markdown, table = report(oe, "cifar100")
    paper_oe = paper_tables()["table2_cifar100_vs_oe"]["OE"]
    assert f"| {OE_NAME} | outlier exposure | **95.00** ({paper_oe['svhn']['auroc']:.2f}) |" in markdown
    assert "α = 0.5, 10 epochs) on ID train and 5,000 outlier images of my_outliers" in markdown and "70.50% after fine-tuning (71.00% before)" in markdown
    assert "Table 4 and Table 2 per OOD set" in markdown and "not run" not in markdown
    # CIFAR-10: the paper has no OE numbers, so the row stands without brackets
    markdown, table = report(oe, "cifar10")
    assert f"| {OE_NAME} | outlier exposure | **95.00** |" in markdown
    assert table[table["method"] == OE_NAME]["paper_auroc"].isna().all()
