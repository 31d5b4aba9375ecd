"""A user's own image folder as the ID set, and one as an OOD set, through the whole real DVC pipeline, with the
params that shape the served detector at other values than the defaults; `dmr score` and every export format then
reproduce the scores the pipeline stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_project, run, write_class_folders
from PIL import Image

pytestmark = pytest.mark.e2e

CLASSES = ("ant", "bee", "cow", "dog")
MODES = ("RGB", "L", "RGBA", "P")


def write_user_sets(root: Path) -> tuple[Path, Path]:
    """A 4-class ID folder (images 20–60 px, four modes, one colour per class plus noise) and an OOD folder."""
    rng = np.random.default_rng(0)
    id_root, ood_root = root / "my_pets", root / "my_ood"
    write_class_folders(id_root, CLASSES, {"train": 24, "test": 8}, (20, 60), MODES, rng)
    (id_root / "train" / "ant" / "notes.txt").write_text("not an image")
    ood_root.mkdir()
    for i in range(30):
        pixels = rng.integers(0, 256, size=(48, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(ood_root / f"{i}.jpg")
    return id_root, ood_root


def test_a_user_image_folder_runs_the_whole_pipeline(tmp_path):
    id_root, ood_root = write_user_sets(tmp_path)
    project = make_tiny_project(tmp_path / "project", {
        "data": {"id_set": str(id_root), "ood_sets": [str(ood_root), "gaussian"], "train_per_class": 0,
                 "test_per_class": 0},
        "classifier": {"init": "scratch", "epochs": 10, "batch_size": 16, "lr": 0.05},
        "synth": {"k": 2, "num_samples": 100, "batch_size": 64},
        # KIRBY's CAM needs the pooled layer, so with features.layer: layer2 a variant without it
        "synth_baselines": {"k": 3, "num_samples": 60, "variants": ["mim"]},
        "baselines": {"knn_k": 5, "reference_images": 50, "detectors": ["MSP", "KNN"]},
        # what the head reads and how wide it is, off their defaults: every reader must take them from the artifacts
        "features": {"layer": "layer2"},
        "head": {"hidden": 48},
    })
    result = run(["dvc", "repro"], project)
    assert "Running stage 'report'" in result.stdout

    data = json.loads((project / "metrics" / "data.json").read_text())
    assert data["classes"] == 4 and data["id_train"]["images"] == 96 and data["id_test"]["images"] == 32
    assert data["id_train"]["skipped"]["not_an_image"] == 1 and data["id_train"]["skipped"]["resized"] == 96
    assert data["id_name"] == "my_pets" and data["ood_suite"] == {"asked": [str(ood_root), "gaussian"], "used": "listed"}
    assert list(data["ood"]) == ["my_ood", "gaussian"] and data["ood"]["my_ood"]["source"] == str(ood_root)

    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert {"my_ood", "gaussian", "mean"} <= set(metrics) and "near_mean" not in metrics
    classifier = json.loads((project / "metrics" / "classifier.json").read_text())
    assert classifier["test_accuracy"] > 40  # four well-separated colours: far above chance (25 %)
    report = (project / "metrics" / "report.md").read_text()
    assert "ID: my_pets test (32 images, 4 classes)" in report and "The paper has no numbers for this ID set" in report
    assert "| method | kind | my_ood | gaussian | mean |" in report

    import torch

    from dmr_core.nets.classifier import load_classifier

    model = load_classifier(project / "data" / "models" / "classifier.pt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)  # the classifier's outputs follow the data's classes
    assert "up to date" in run(["dvc", "status"], project).stdout
    served_scores_equal_the_stored_ones(project, tmp_path)


# the bounds of tests/unit/test_scoring.py: ONNX Runtime rounds its convolutions differently from torch
SCORE_TOLERANCE = {".pt2": 1e-5, ".pt": 1e-5, ".onnx": 1e-3}


def served_scores_equal_the_stored_ones(project: Path, tmp_path: Path) -> None:
    """The ID test images as files through `dmr score`, and through each exported file: DMR and combined scores equal
    what stages eval and combine stored for them."""
    import pandas as pd
    import zarr

    from dmr_core.serving.export import ExportedDetector

    images = zarr.open_group(str(project / "data" / "datasets" / "id_test.zarr"), mode="r")["images"][:]
    dmr = zarr.open_group(str(project / "data" / "dmr_scores.zarr"), mode="r")["id_test"][:]
    stored = zarr.open_group(str(project / "data" / "combined_scores.zarr"), mode="r")
    combined = stored["id_test"][:]

    def combined_tolerance(dmr_tolerance: float) -> float:
        """A combined score moves by its parts' moves over their spreads (the KNN part's by float32 rounding)."""
        return (dmr_tolerance / stored.attrs["dmr_standardisation"]["std"]
                + 1e-5 / stored.attrs["posthoc_standardisation"]["std"])

    folder = tmp_path / "served"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    run(["dmr", "score", str(folder), "--out", str(tmp_path / "scores.csv")], project)
    rows = pd.read_csv(tmp_path / "scores.csv").sort_values("path")
    assert [Path(p).name for p in rows["path"]] == [f"{i:04d}.png" for i in range(len(images))]
    np.testing.assert_allclose(rows["dmr_score"], dmr, rtol=0, atol=1e-4)
    np.testing.assert_allclose(rows["combined_score"], combined, rtol=0, atol=combined_tolerance(1e-4))
    for suffix, tolerance in SCORE_TOLERANCE.items():
        path = tmp_path / f"model{suffix}"
        run(["dmr", "export", str(path)], project)
        out = ExportedDetector.load(path).score(images)
        dmr_tolerance = tolerance * (1 + np.abs(dmr).max())
        np.testing.assert_allclose(out["dmr_score"], dmr, rtol=0, atol=dmr_tolerance)
        np.testing.assert_allclose(out["combined_score"], combined, rtol=0, atol=combined_tolerance(dmr_tolerance))
