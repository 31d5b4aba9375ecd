"""Images at their own size through the whole real DVC pipeline: a folder of non-square photos of mixed sizes and
modes, stored at data.image_size 48 (CIFAR-stem net, every generator stage built for 48 px) and 64 (a torchvision
model fed the 64-px images as they are); every artifact at that size, and `dmr score` / the exported files taking
images of the run's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import make_tiny_project, run, write_class_folders
from PIL import Image

pytestmark = pytest.mark.e2e

CLASSES = ("cat", "fox", "owl")
MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def write_photos(root: Path) -> tuple[Path, Path]:
    """A 3-class ID folder of non-square images 40 to 150 px a side in five modes (a colour per class plus noise)
    and an OOD folder of noise images of other shapes."""
    rng = np.random.default_rng(0)
    id_root, ood_root = root / "photos", root / "other"
    write_class_folders(id_root, CLASSES, {"train": 30, "test": 10}, (40, 150), MODES, rng)
    ood_root.mkdir()
    for i in range(24):
        pixels = rng.integers(0, 256, size=(int(rng.integers(30, 120)), int(rng.integers(30, 120)), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(ood_root / f"{i}.png")
    return id_root, ood_root


def tiny_project_at(size: int, tmp_path: Path, classifier: dict, extra: dict | None = None) -> Path:
    id_root, ood_root = write_photos(tmp_path)
    return make_tiny_project(tmp_path / "project", {
        "data": {"id_set": str(id_root), "ood_sets": [str(ood_root), "gaussian"], "train_per_class": 0,
                 "test_per_class": 0, "image_size": size},
        "classifier": {"init": "scratch", "epochs": 3, "batch_size": 16, "lr": 0.05, **classifier},
        "synth": {"k": 2, "num_samples": 90, "batch_size": 32},
        "synth_baselines": {"k": 2, "num_samples": 60},
        "baselines": {"knn_k": 5, "reference_images": 50},
        **(extra or {}),
    })


def stored_images(project: Path, name: str) -> np.ndarray:
    return zarr.open_group(str(project / "data" / name), mode="r")["images"][:]


def scores_of_files(project: Path, images: np.ndarray, folder: Path) -> np.ndarray:
    """`dmr score` of ``images`` written as PNG files, in file order."""
    import pandas as pd

    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    out = folder.with_suffix(".csv")
    run(["dmr", "score", str(folder), "--out", str(out)], project)
    rows = pd.read_csv(out).sort_values("path")
    assert [Path(p).name for p in rows["path"]] == [f"{i:04d}.png" for i in range(len(images))]
    return rows["dmr_score"].to_numpy()


def test_48_px_photos_run_the_whole_pipeline_at_their_size(tmp_path):
    import torch

    from dmr_core.nets.classifier import load_classifier
    from dmr_core.nets.generator import load_generator
    from dmr_core.serving.export import ExportedDetector

    # KIRBY reads F's class activation maps at the run's size; ReAct computes logits from the pooled map
    project = tiny_project_at(48, tmp_path, {"epochs": 2}, {
        "synth_baselines": {"k": 2, "num_samples": 60, "variants": ["kirby"]},
        "baselines": {"knn_k": 5, "reference_images": 50, "detectors": ["MSP", "ReAct", "KNN"]},
    })
    result = run(["dvc", "repro"], project)
    assert "Running stage 'report'" in result.stdout
    data = json.loads((project / "metrics" / "data.json").read_text())
    assert data["image_size"] == 48 and data["id_train"]["images"] == 90
    assert data["id_train"]["skipped"]["resized"] == 90 and data["id_train"]["skipped"]["converted_to_rgb"] == 72
    for name in ("datasets/id_train.zarr", "datasets/id_test.zarr", "datasets/ood/other.zarr",
                 "datasets/ood/gaussian.zarr", "ood_synth.zarr"):
        assert stored_images(project, name).shape[1:] == (48, 48, 3), name
    classifier = load_classifier(project / "data" / "models" / "classifier.pt")
    assert classifier.image_size == 48
    generator = load_generator(project / "data" / "models" / "generator.pt")
    assert generator.image_size == 48 and generator.decode(torch.zeros(1, 16)).shape == (1, 3, 48, 48)
    features = zarr.open_group(str(project / "data" / "features.zarr"), mode="r")
    # resnet20's layer3 at 48 px is 12×12, pooled in 2×2 cells to within features.max_grid (8)
    assert features["id_train"]["feature_map"].shape[1:] == (64, 6, 6)
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert {"other", "gaussian", "mean"} <= set(metrics)
    assert json.loads((project / "metrics" / "classifier.json").read_text())["test_accuracy"] > 50  # chance: 33 %

    test_images = stored_images(project, "datasets/id_test.zarr")
    dmr = zarr.open_group(str(project / "data" / "dmr_scores.zarr"), mode="r")["id_test"][:]
    np.testing.assert_allclose(scores_of_files(project, test_images, tmp_path / "served"), dmr, rtol=0, atol=1e-4)
    path = tmp_path / "model.pt2"
    run(["dmr", "export", str(path)], project)
    exported = ExportedDetector.load(path)
    assert exported.meta["image_size"] == 48 and exported.meta["input"].startswith("uint8 N×48×48×3")
    np.testing.assert_allclose(exported.score(test_images)["dmr_score"], dmr, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="uint8 N×48×48×3"):
        exported.score(np.zeros((1, 32, 32, 3), np.uint8))


def test_64_px_photos_with_a_torchvision_model_seen_at_64_px(tmp_path):
    from dmr_core.nets.classifier import load_classifier

    project = tiny_project_at(64, tmp_path, {"arch": "torchvision:mobilenet_v3_small", "lr": 0.01}, {
        # the feature map of a torchvision model does not pool into its classification layer: no ReAct, ASH, KIRBY
        "baselines": {"knn_k": 5, "reference_images": 50, "detectors": ["MSP", "Energy", "KNN"]},
        "synth_baselines": {"k": 2, "num_samples": 60, "variants": ["mim"]},
        "generator": {"kind": "conv_vae"},
    })
    result = run(["dvc", "repro"], project)
    assert "Running stage 'report'" in result.stdout
    classifier = load_classifier(project / "data" / "models" / "classifier.pt")
    assert classifier.image_size == 64 and classifier.input_size is None  # no resize: the photos at 64 px
    features = zarr.open_group(str(project / "data" / "features.zarr"), mode="r")
    assert features["id_train"]["feature_map"].shape[1:] == (576, 2, 2)  # mobilenet_v3_small's /32 map at 64 px
    test_images = stored_images(project, "datasets/id_test.zarr")
    assert test_images.shape[1:] == (64, 64, 3)
    dmr = zarr.open_group(str(project / "data" / "dmr_scores.zarr"), mode="r")["id_test"][:]
    np.testing.assert_allclose(scores_of_files(project, test_images, tmp_path / "served"), dmr, rtol=0, atol=1e-4)
