"""Every profile's first stages on a tiny subset: the data and classifier stages of each distinct (ID set,
architecture) of the profiles, with the profile's params and tiny sizes over them (the classifier on the first ten
images the data stage wrote); and the GPU benchmark's profile mode on a tiny folder, its first two stages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import DEFAULTS, ROOT, USER_IMAGES, cifar100_archive, data_home_available, write_files

from dmr_core.data.artifacts import save_zarr
from dmr_core.nets.classifier import load_classifier
from dmr_core.params import Params, parse_params
from dmr_core.profiles.compose import compose_params, load_profile, profile_names
from stages import classifier as classifier_stage
from stages import data as data_stage
from dmr_core.data.layout import id_split_path, read_image_set

pytestmark = pytest.mark.e2e

# the sizes over the profile's params: the fewest images per class, one short epoch, one tiny OOD set
TINY = [("data.test_per_class", 1), ("data.ood_sets", ["gaussian"]), ("data.gaussian_count", 10),
        ("classifier.epochs", 1), ("classifier.batch_size", 50), ("baselines.knn_k", 5),
        ("baselines.reference_images", 10), ("synth_baselines.num_samples", 10)]
TRAIN_PER_CLASS = {"cifar10": 1, "cifar100": 1}
CLASSES = {"cifar10": 10, "cifar100": 100}
# the classifier stage reads at most this many images of each split: CIFAR-100's one image per class would make
# 100 + 100 images, minutes for ResNet-50 and DenseNet-121 on two CPU cores
CLASSIFIER_IMAGES = 10
# what the head reads of each architecture (features.layer: auto)
FEATURE_MAPS = {"wrn40_2": (128, 8, 8), "densenet100_bc": (342, 8, 8), "resnet50": (2048, 4, 4),
                "densenet121": (1024, 4, 4)}


def _pairs() -> dict[tuple[str, str], str]:
    """The first profile (by name) of each distinct (ID set, architecture)."""
    pairs: dict[tuple[str, str], str] = {}
    for name in profile_names():
        params = compose_params(DEFAULTS, load_profile(name))
        pairs.setdefault((params["data"]["id_set"], params["classifier"]["arch"]), name)
    return pairs


PAIRS = _pairs()


def tiny_params(name: str) -> Params:
    id_set = compose_params(DEFAULTS, load_profile(name))["data"]["id_set"]
    return parse_params(compose_params(DEFAULTS, load_profile(name),
                                       [("data.train_per_class", TRAIN_PER_CLASS[id_set]), *TINY]))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The data stage's output for an ID set, run once per ID set: CIFAR-10 from DMR_DATA_HOME, CIFAR-100 from an
    archive fabricated in CIFAR-10's layout (the real one is downloaded by a user online)."""
    made: dict[str, object] = {}

    def datasets_of(name: str):
        params = tiny_params(name)
        id_set = params.data.id_set
        if id_set not in made:
            folder = tmp_path_factory.mktemp(id_set)
            with pytest.MonkeyPatch.context() as patch:
                if id_set == "cifar100":
                    patch.setenv("DMR_DATA_HOME", str(cifar100_archive(folder, per_class=1).parent))
                elif not data_home_available():
                    pytest.skip("needs DMR_DATA_HOME with cifar10.tar (the offline datasets)")
                data_stage.main(params, out=folder / "datasets", metrics=folder / "data.json")
            for split in ("train", "test"):  # the first images of each split, as the data stage wrote them
                images, labels, attrs = read_image_set(id_split_path(folder / "datasets", split))
                save_zarr(folder / f"classifier_{split}.zarr",
                          {"images": images[:CLASSIFIER_IMAGES], "labels": labels[:CLASSIFIER_IMAGES]}, attrs=attrs)
            made[id_set] = folder
        return made[id_set]

    return datasets_of


def test_the_profiles_cover_every_table_configuration():
    tables = {(i, a) for i in ("cifar10", "cifar100") for a in ("wrn40_2", "resnet50", "densenet121")}
    assert set(PAIRS) == tables | {("cifar10", "densenet100_bc")}  # and the second CIFAR-10 backbone


@pytest.mark.parametrize("pair", sorted(PAIRS), ids=lambda pair: f"{pair[0]}-{pair[1]}")
def test_data_and_classifier_stages_of_each_id_set_and_architecture(pair, datasets, tmp_path, monkeypatch):
    id_set, arch = pair
    params = tiny_params(PAIRS[pair])
    folder = datasets(PAIRS[pair])
    data = json.loads((folder / "data.json").read_text())
    assert data["id_set"] == id_set and data["classes"] == CLASSES[id_set]
    assert data["id_train"]["images"] == TRAIN_PER_CLASS[id_set] * CLASSES[id_set]
    monkeypatch.setenv("DMR_DEVICE", "cpu")
    classifier_stage.main(params, train=folder / "classifier_train.zarr", test=folder / "classifier_test.zarr",
                          out=tmp_path / "classifier.pt", metrics=tmp_path / "classifier.json",
                          curve=tmp_path / "classifier_curve.csv")
    metrics = json.loads((tmp_path / "classifier.json").read_text())
    assert (metrics["arch"], metrics["init"]) == (arch, params.classifier.init) and params.classifier.arch == arch
    assert len(metrics["train_loss_per_epoch"]) == 1 and math.isfinite(metrics["train_loss_per_epoch"][0])
    model = load_classifier(tmp_path / "classifier.pt")
    assert model.classifier_head().out_features == CLASSES[id_set]
    with torch.no_grad():
        reps = model.representations(torch.rand(2, 3, 32, 32))
    assert tuple(reps["feature_map"].shape[1:]) == FEATURE_MAPS[arch]
    assert np.isfinite(reps["logits"].numpy()).all()


def test_the_benchmark_runs_a_profile_stage_by_stage(tmp_path):
    """bench/bench.py --profile on a tiny folder ID set, stopped after its first stage (each stage is one more
    `dvc repro --single-item` of the same loop): wall time and images/s in the JSON, the device named, the total."""
    images = write_files(tmp_path / "pets", USER_IMAGES)
    out = tmp_path / "bench.json"
    tiny = ["data.train_per_class=1", "data.test_per_class=1", f"data.id_set={images}", "synth.k=1",
            "synth_baselines.k=2", "baselines.knn_k=2", "baselines.reference_images=2",
            "synth_baselines.num_samples=2", "data.ood_sets=[gaussian]", "data.gaussian_count=4",
            "classifier.epochs=1", "classifier.batch_size=4"]
    result = subprocess.run([sys.executable, "bench/bench.py", "--profile", "gpu_paper_scale",
                             *(arg for item in tiny for arg in ("-S", item)), "--until", "data", "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, check=False,
                            env={**os.environ, "DMR_DEVICE": "cpu", "DVC_NO_ANALYTICS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["machine"]["device"] == "cpu" and figures["profile"] == "gpu_paper_scale"
    assert list(figures["stages"]) == ["data"] and figures["complete"] is False
    assert figures["images"] == {"train": 3, "test": 3, "ood": 4}
    wall = figures["stages"]["data"]["wall_s"]
    assert wall > 0 and figures["stages"]["data"]["images_per_s"] == pytest.approx((3 + 3 + 4) / wall, abs=0.051)
    assert figures["total_s"] == wall and figures["within_budget"] is (wall <= 600)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # every stage of dvc.yaml, with the synthesis baselines of gpu_paper_scale (mlm, dmr) for the foreach
    expected = sum("foreach" not in stage for stage in stages.values()) + 2
    assert f"{expected} stages, classifier wrn40_2 for 1 epochs" in result.stdout
    assert "data:" in result.stdout and "total:" in result.stdout and "images/s" in result.stdout
    refused = subprocess.run([sys.executable, "bench/bench.py", "--profile", "gpu_paper_scale", "-S",
                              "classifier.arch=resnet20", "--out", str(out)], cwd=ROOT, capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "profile gpu_paper_scale: invalid params: classifier.dropout = 0.3 with classifier.arch = 'resnet20': only "
        "wrn40_2 has a dropout; set classifier.dropout: 0")
