"""`dmr score` and `dmr export`: new images scored as the pipeline scores them, on a tiny run built in the test."""

import functools
import io
import json
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from helpers import ROOT, image_bytes
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from dmr_core import cli
from dmr_core.data.artifacts import save_zarr
from dmr_core.detectors.posthoc import PosthocSettings, ScoringSet, fit_detectors, score_sets
from dmr_core.nets.checkpoints import file_sha256
from dmr_core.nets.classifier import build_classifier, save_classifier
from dmr_core.nets.features import extract_features
from dmr_core.nets.rejection_head import RejectionHead, save_head
from dmr_core.params import load_params
from dmr_core.data.sources import fit_image as to_pipeline_image

runner = CliRunner()
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_classifier(seed: int = 0):
    """A ResNet-20 with non-trivial BatchNorm statistics, so that folding them changes the weights."""
    torch.manual_seed(seed)
    model = build_classifier("resnet20")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def images(n: int, seed: int, bright: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 32, 32, 3)) if not bright else rng.integers(200, 256, (n, 32, 32, 3))
    return base.astype(np.uint8)


def build_run(root, layer: str = "auto", head_seed: int = 1, feature: str = "feature_map"):
    """A trained run's artifacts in ``root``, written by the library's save functions and stages eval and combine,
    its head reading representation ``feature`` (head.feature) with the classifier's module ``layer`` as the
    feature map (features.layer): (root, {stage: command}, {set: images})."""
    from stages import combine
    from stages import eval as eval_stage

    root.mkdir(parents=True, exist_ok=True)
    classifier = tiny_classifier().set_feature_layer(layer)
    save_classifier(classifier, "resnet20", root / "classifier.pt")
    sets = {"id_train": images(60, 0), "id_test": images(12, 1), "icons": images(12, 2, bright=True)}
    reps = {name: extract_features(classifier, x) for name, x in sets.items()}
    torch.manual_seed(head_seed)
    save_head(RejectionHead(reps["id_test"][feature][0].size, 16), feature, root / "head.pt",
              feature_layer=layer, classifier_sha256=file_sha256(root / "classifier.pt"))
    labels = np.arange(60) % 10
    save_zarr(root / "train.zarr", {"images": sets["id_train"], "labels": labels}, attrs={"class_names": CLASSES})
    reps["id_train"]["labels"] = labels
    save_zarr(root / "features.zarr", {"id_train": reps["id_train"], "id_test": reps["id_test"],
                                       "ood": {"icons": reps["icons"]}}, attrs={"ood_sets": ["icons"]})
    # the post-hoc scores as stage baselines computes them (the library's fit and scoring path)
    params = load_params(ROOT / "params.yaml")
    detectors = fit_detectors(classifier, reps["id_train"], labels, params.baselines.to(PosthocSettings), ("KNN",))
    reference = np.arange(0, 60, 2)
    scored, _ = score_sets(detectors, {
        "id_test": ScoringSet(reps["id_test"], sets["id_test"]), "icons": ScoringSet(reps["icons"], sets["icons"]),
        "id_train_reference": ScoringSet({k: v[reference] for k, v in reps["id_train"].items()}, None)}, 500)
    save_zarr(root / "posthoc.zarr", {"reference_indices": reference, **scored})
    eval_stage.main(params, root / "head.pt", root / "features.zarr", root / "dmr.zarr", root / "eval.json",
                    root / "plots")
    combine.main(params, root / "dmr.zarr", root / "posthoc.zarr", root / "head.pt", root / "features.zarr",
                 root / "combined.zarr", root / "combined.json")
    return root, build_commands(root), sets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("run"))


@pytest.fixture
def use_run(run, monkeypatch):
    monkeypatch.setattr(cli, "pipeline_commands", lambda: run[1])
    return run


# the KNN part is rebuilt from the stored reference vectors (a matrix product, not scikit-learn's index): its
# distances equal pytorch-ood's up to float32 rounding, KNN_TOLERANCE in distance units
KNN_TOLERANCE = 1e-5


def combined_tolerance(attrs, dmr_tolerance: float) -> float:
    """How far a combined score may move when its DMR part moves by ``dmr_tolerance`` and its KNN part by
    KNN_TOLERANCE: each divided by its standardisation's spread."""
    return (dmr_tolerance / attrs["dmr_standardisation"]["std"]
            + KNN_TOLERANCE / attrs["posthoc_standardisation"]["std"])


def test_score_reproduces_the_pipelines_scores_of_the_same_images(use_run, tmp_path):
    """Lossless files of the ID-test images: DMR and combined scores equal what stages eval and combine stored."""
    root, _, sets = use_run
    folder = tmp_path / "id_test"
    folder.mkdir()
    for i, image in enumerate(sets["id_test"]):
        (folder / f"{i:02d}.png").write_bytes(image_bytes(image))
    result = runner.invoke(cli.app, ["score", str(folder), "--out", str(tmp_path / "scores.csv")])
    assert result.exit_code == 0, result.output
    # rows come in the file system's order; each names its file
    rows = pd.read_csv(tmp_path / "scores.csv").sort_values("path", ignore_index=True)
    assert list(rows.columns) == ["path", "predicted_class", "confidence", "is_ood", "dmr_score", "dmr_is_ood",
                                  "combined_score", "combined_is_ood", "error"]
    dmr = zarr.open_group(str(root / "dmr.zarr"), mode="r")
    combined = zarr.open_group(str(root / "combined.zarr"), mode="r")
    np.testing.assert_array_equal(rows["dmr_score"].to_numpy(np.float32), dmr["id_test"][:])
    np.testing.assert_allclose(rows["combined_score"], combined["id_test"][:], rtol=0,
                               atol=combined_tolerance(combined.attrs, 0))
    np.testing.assert_array_equal(rows["dmr_is_ood"], dmr["id_test"][:] > dmr.attrs["threshold"])
    np.testing.assert_array_equal(rows["combined_is_ood"], combined["id_test"][:] > combined.attrs["threshold"])
    # auto: the detector with the higher near-OOD (here: only far-OOD, so mean) AUROC decides, and says so
    decision = "combined" if combined.attrs["summary"]["mean"] > dmr.attrs["summary"]["mean"] else "dmr"
    np.testing.assert_array_equal(rows["is_ood"], rows[f"{decision}_is_ood"])
    assert "higher mean AUROC in this run" in result.output
    logits = extract_features(tiny_classifier(), sets["id_test"])["logits"]
    assert list(rows["predicted_class"]) == [CLASSES[i] for i in logits.argmax(1)]
    np.testing.assert_allclose(rows["confidence"], torch.softmax(torch.from_numpy(logits), 1).max(1).values,
                               rtol=1e-6)
    assert "scored 12 image(s)" in result.output and "0 unreadable" in result.output


def test_the_runs_combined_score_as_a_pytorch_ood_detector_equals_the_stored_scores(run):
    """TrainedDetector.pytorch_ood_detector(): predict(float N×3×H×W images, as ToTensor gives them) equals what
    stage combine stored, and pytorch-ood's OODMetrics on its scores gives the AUROC stage combine reported."""
    from pytorch_ood.api import Detector
    from pytorch_ood.metrics import OODMetrics

    from dmr_core.serving.detector import TrainedDetector
    from dmr_core.serving.run import run_artifacts

    root, commands, sets = run
    detector = TrainedDetector.load(run_artifacts(commands)).pytorch_ood_detector()
    assert isinstance(detector, Detector)
    stored = zarr.open_group(str(root / "combined.zarr"), mode="r")
    as_tensor = {name: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for name, x in sets.items()}
    id_scores, ood_scores = detector.predict(as_tensor["id_test"]), detector(as_tensor["icons"])
    tolerance = combined_tolerance(stored.attrs, 0)
    np.testing.assert_allclose(id_scores.numpy(), stored["id_test"][:], rtol=0, atol=tolerance)
    np.testing.assert_allclose(ood_scores.numpy(), stored["ood"]["icons"][:], rtol=0, atol=tolerance)
    metrics = OODMetrics()
    metrics.update(torch.cat([id_scores, ood_scores]),
                   torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(ood_scores))]).long())
    reported = json.loads((root / "combined.json").read_text())
    assert metrics.compute()["AUROC"] * 100 == pytest.approx(reported["icons"]["AUROC"], abs=1e-2)


def _mixed_inputs(tmp_path):
    """A folder (nested) of images of mixed sizes and modes, a text file and a corrupt PNG; a tar; a single file."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "big.jpg").write_bytes(_jpeg(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)))
    (folder / "sub" / "gray.png").write_bytes(image_bytes(rng.integers(0, 256, (40, 32, 3), np.uint8), mode="L"))
    (folder / "sub" / "rgba.png").write_bytes(image_bytes(rng.integers(0, 256, (32, 32, 3), np.uint8), mode="RGBA"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "corrupt.png").write_bytes(image_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))[:60])
    archive = tmp_path / "more.tar"
    with tarfile.open(archive, "w") as tar:
        for name, payload in (("a/p.png", image_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="P")),
                              ("b.bmp", _bmp(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    single = tmp_path / "single.png"
    single.write_bytes(image_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    return folder, archive, single


def _jpeg(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def _bmp(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="BMP")
    return buffer.getvalue()


def test_score_folder_tar_and_files_to_json_counting_unreadable(use_run, tmp_path):
    folder, archive, single = _mixed_inputs(tmp_path)
    out = tmp_path / "scores.json"
    result = runner.invoke(cli.app, ["score", str(folder), str(archive), str(single), "--out", str(out),
                                     "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    rows = {row["path"]: row for row in payload["images"]}
    # inputs in the order given; a folder's files in the file system's order, a tar's members in archive order
    folder_rows = sorted(list(rows)[:5])
    assert folder_rows == [str(folder / "big.jpg"), str(folder / "corrupt.png"), str(folder / "notes.txt"),
                           str(folder / "sub" / "gray.png"), str(folder / "sub" / "rgba.png")]
    assert list(rows)[5:] == [f"{archive}:a/p.png", f"{archive}:b.bmp", str(single)]
    assert rows[str(folder / "notes.txt")]["error"] == "not an image, or a corrupt one"
    assert rows[str(folder / "corrupt.png")]["error"] == "not an image, or a corrupt one"
    assert rows[str(folder / "notes.txt")]["dmr_score"] is None
    good = [row for row in payload["images"] if row["error"] is None]
    assert len(good) == 6 and all(row["predicted_class"] in CLASSES and 0 < row["confidence"] <= 1 for row in good)
    threshold = payload["model"]["threshold"]
    assert all(row["dmr_is_ood"] == (row["dmr_score"] > threshold) for row in good)
    assert payload["summary"] == {
        "scored": 6, "ood": sum(r["is_ood"] for r in good), "dmr_ood": sum(r["dmr_is_ood"] for r in good),
        "combined_ood": sum(r["combined_is_ood"] for r in good), "unreadable": 2,
        "folders": {str(folder): {"scored": 1, "ood": int(rows[str(folder / "big.jpg")]["is_ood"]), "unreadable": 2},
                    str(folder / "sub"): {"scored": 2, "ood": sum(rows[str(folder / "sub" / n)]["is_ood"]
                                                                  for n in ("gray.png", "rgba.png")),
                                          "unreadable": 0},
                    str(archive): {"scored": 2, "ood": sum(rows[f"{archive}:{n}"]["is_ood"] for n in ("a/p.png", "b.bmp")),
                                   "unreadable": 0},
                    str(tmp_path): {"scored": 1, "ood": int(rows[str(single)]["is_ood"]), "unreadable": 0}}}
    assert f"unreadable: {folder / 'notes.txt'}: not an image, or a corrupt one" in result.output
    assert "2 unreadable" in result.output
    # the image decoded and resized by the data stage's rule, scored alone, gives the same score (up to the float
    # rounding that depends on the batch a convolution sees)
    from dmr_core.serving.detector import TrainedDetector
    from dmr_core.serving.run import run_artifacts

    detector = TrainedDetector.load(run_artifacts(use_run[1]))
    rgb = Image.open(folder / "big.jpg")
    np.testing.assert_allclose(detector.score(np.stack([to_pipeline_image(rgb)]))["dmr_score"][0],
                               rows[str(folder / "big.jpg")]["dmr_score"], rtol=1e-4)


def test_pipeline_size_rule_leaves_32_pixel_rgb_untouched_and_crops_others():
    image = images(1, 9)[0]
    assert np.array_equal(to_pipeline_image(Image.fromarray(image)), image)
    wide = to_pipeline_image(Image.fromarray(np.zeros((40, 100, 3), np.uint8)).convert("L"))
    assert wide.shape == (32, 32, 3) and wide.dtype == np.uint8


def test_score_prints_a_table_without_out(use_run, tmp_path):
    _, archive, single = _mixed_inputs(tmp_path)
    result = runner.invoke(cli.app, ["score", str(single), str(archive), "--no-combined"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["path", "predicted_class", "confidence", "is_ood", "dmr_score", "dmr_is_ood", "error"]
    assert len(lines) == 4 and lines[1].startswith(str(single)) and lines[3].startswith(f"{archive}:b.bmp")
    assert "scored 3 image(s)" in result.output


def test_score_without_a_trained_run_says_so_in_one_line(run, tmp_path, monkeypatch):
    commands = {**run[1], "eval": f"python -m stages.eval --head {tmp_path / 'head.pt'} --scores x.zarr"}
    monkeypatch.setattr(cli, "pipeline_commands", lambda: commands)
    single = tmp_path / "a.png"
    single.write_bytes(image_bytes(images(1, 0)[0]))
    for command in (["score", str(single), "--out", str(tmp_path / "s.csv")], ["export", str(tmp_path / "m.pt")]):
        result = runner.invoke(cli.app, command)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [(
            f"no trained run here: {tmp_path / 'head.pt'} (the rejection head) is missing; run `dvc repro` first to "
            f"train the detector")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no partial output


def test_score_refuses_bad_arguments_in_one_line(use_run, tmp_path):
    single = tmp_path / "a.png"
    single.write_bytes(image_bytes(images(1, 0)[0]))
    for args, expected in (([str(tmp_path / "missing.png")], "no such file or folder"),
                           ([str(single), "--out", str(tmp_path / "s.xlsx")], "unknown output format '.xlsx'"),
                           ([str(single), "--model", str(tmp_path / "a.png")], "is not an exported DMR model")):
        result = runner.invoke(cli.app, ["score", *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1 and expected in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The tiny run exported in every format, combined (the default) and head alone."""
    root, commands, _ = run
    out = tmp_path_factory.mktemp("exported")
    patch = pytest.MonkeyPatch()
    patch.setattr(cli, "pipeline_commands", lambda: commands)
    try:
        for name, suffix in (("pt2", ".pt2"), ("onnx", ".onnx"), ("torchscript", ".pt")):
            result = runner.invoke(cli.app, ["export", str(out / f"model{suffix}")])
            assert result.exit_code == 0, result.output
            assert f"({name}, " in result.output
        result = runner.invoke(cli.app, ["export", str(out / "head.pt2"), "--no-combined", "--keep", "0.99"])
        assert result.exit_code == 0, result.output
    finally:
        patch.undo()
    return out


# relative: ONNX Runtime's convolutions round differently from torch's; the pt2 and TorchScript files run torch's own
# kernels, traced
TOLERANCE = {"pt2": 1e-6, "torchscript": 1e-6, "onnx": 1e-4}


@pytest.mark.parametrize("fmt,suffix", [("pt2", ".pt2"), ("onnx", ".onnx"), ("torchscript", ".pt")])
def test_exported_file_loads_without_the_project_and_equals_the_pipelines_scores(run, exported, fmt, suffix):
    """Each format, loaded by its own runtime alone: DMR and combined scores equal what stages eval and combine
    stored for the same images, and the decisions follow the stored thresholds."""
    root, _, sets = run
    path = exported / f"model{suffix}"
    images = sets["id_test"]
    if fmt == "pt2":
        extra = {"dmr.json": ""}
        module = torch.export.load(str(path), extra_files=extra).module()
        out = {k: v.numpy() for k, v in module(torch.from_numpy(images)).items()}
        meta = json.loads(extra["dmr.json"])
    elif fmt == "torchscript":
        extra = {"dmr.json": ""}
        module = torch.jit.load(str(path), _extra_files=extra)
        out = {k: v.numpy() for k, v in module(torch.from_numpy(images)).items()}
        as_float = module(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        np.testing.assert_array_equal(as_float["dmr_score"].numpy(), out["dmr_score"])
        meta = json.loads(extra["dmr.json"])
        with pytest.raises(Exception, match=r"\[0, 1\]"):
            module(torch.full((1, 3, 32, 32), 255.0))
        nan = torch.rand(2, 3, 32, 32)
        nan[1, 0, 4, 4] = float("nan")
        assert module(nan)["is_ood"].tolist()[1] is True  # an image holding NaN is flagged, never passed
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(names, {"images": images})))
        meta = json.loads(session.get_modelmeta().custom_metadata_map["dmr.json"])
    dmr = zarr.open_group(str(root / "dmr.zarr"), mode="r")
    combined = zarr.open_group(str(root / "combined.zarr"), mode="r")
    assert meta["threshold"] == dmr.attrs["threshold"] and meta["combined"]["threshold"] == combined.attrs["threshold"]
    assert meta["thresholds"] == dmr.attrs["thresholds"] and meta["class_names"] == CLASSES
    stored = dmr["id_test"][:]
    np.testing.assert_allclose(out["dmr_score"], stored, rtol=TOLERANCE[fmt], atol=TOLERANCE[fmt])
    dmr_tolerance = TOLERANCE[fmt] * (1 + np.abs(stored).max())
    np.testing.assert_allclose(out["combined_score"], combined["id_test"][:], rtol=0,
                               atol=combined_tolerance(combined.attrs, dmr_tolerance))
    np.testing.assert_array_equal(out["dmr_is_ood"], out["dmr_score"].astype(np.float64) > meta["threshold"])
    np.testing.assert_array_equal(out["combined_is_ood"], out["combined_score"] > meta["combined"]["threshold"])
    np.testing.assert_array_equal(out["is_ood"], out[f"{meta['decision']}_is_ood"])
    reps = extract_features(tiny_classifier(), images)
    np.testing.assert_allclose(out["logits"], reps["logits"], rtol=TOLERANCE[fmt], atol=TOLERANCE[fmt])
    assert (out["predicted"] == reps["logits"].argmax(1)).all()


@pytest.mark.parametrize("suffix", [".pt2", ".onnx", ".pt"])
def test_score_with_an_exported_file_equals_score_with_the_run(use_run, exported, tmp_path, suffix):
    root, _, sets = use_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(sets["icons"]):
        (folder / f"{i:02d}.png").write_bytes(image_bytes(image))
    via_model = runner.invoke(cli.app, ["score", str(folder), "--model", str(exported / f"model{suffix}"), "--out",
                                        str(tmp_path / "m.csv"), "--batch-size", "5"])
    via_run = runner.invoke(cli.app, ["score", str(folder), "--out", str(tmp_path / "r.csv")])
    assert via_model.exit_code == 0 and via_run.exit_code == 0, (via_model.output, via_run.output)
    a, b = pd.read_csv(tmp_path / "m.csv"), pd.read_csv(tmp_path / "r.csv")
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a["dmr_score"], b["dmr_score"], rtol=1e-4, atol=1e-4)
    dmr_tolerance = 1e-4 * (1 + np.abs(b["dmr_score"]).max())
    combined = zarr.open_group(str(root / "combined.zarr"), mode="r")
    np.testing.assert_allclose(a["combined_score"], b["combined_score"], rtol=0,
                               atol=combined_tolerance(combined.attrs, dmr_tolerance))
    assert (a["predicted_class"] == b["predicted_class"]).all()


def test_head_alone_export_at_another_operating_point(run, exported):
    root, _, sets = run
    module = torch.export.load(str(exported / "head.pt2")).module()
    out = module(torch.from_numpy(sets["id_test"]))
    dmr = zarr.open_group(str(root / "dmr.zarr"), mode="r")
    assert "combined_score" not in out
    threshold = dmr.attrs["thresholds"]["0.99"]
    assert torch.equal(out["is_ood"], out["dmr_score"].double() > threshold)
    assert torch.equal(out["is_ood"], out["dmr_is_ood"])


def test_operating_points_keep_what_they_say(run):
    """eval.json and combined.json hold a threshold per share of ID images kept, and per OOD set the share that
    passes it, computed from the stored scores."""
    root, _, _ = run
    for metrics, scores in (("eval.json", "dmr.zarr"), ("combined.json", "combined.zarr")):
        points = json.loads((root / metrics).read_text())["operating_points"]
        group = zarr.open_group(str(root / scores), mode="r")
        assert sorted(points) == ["0.9", "0.95", "0.99"]
        for key, point in points.items():
            ids = group["id_test"][:].astype(np.float64)
            assert point["id_kept"] == pytest.approx(np.mean(ids <= point["threshold"]), abs=1e-5)
            assert point["id_kept"] >= float(key)
            icons = group["ood"]["icons"][:].astype(np.float64)
            assert point["passed"]["icons"] == pytest.approx(np.mean(icons <= point["threshold"]), abs=1e-5)
        assert points["0.95"]["threshold"] == group.attrs["threshold"]


def test_score_keep_and_detector_choose_the_decision(use_run, tmp_path):
    root, _, sets = use_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(sets["id_test"]):
        (folder / f"{i:02d}.png").write_bytes(image_bytes(image))
    out = tmp_path / "s.json"
    result = runner.invoke(cli.app, ["score", str(folder), "--keep", "0.9", "--detector", "dmr", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    dmr = zarr.open_group(str(root / "dmr.zarr"), mode="r")
    assert payload["model"]["threshold"] == dmr.attrs["thresholds"]["0.9"] and payload["model"]["decision"] == "dmr"
    assert all(row["is_ood"] == row["dmr_is_ood"] == (row["dmr_score"] > payload["model"]["threshold"])
               for row in payload["images"])
    for args, expected in ((["--keep", "0.8"], "stores no threshold keeping 0.8 of ID images"),
                           (["--detector", "vim"], "unknown detector 'vim'"),
                           (["--detector", "combined", "--no-combined"], "the run has no combined score")):
        result = runner.invoke(cli.app, ["score", str(folder), *args])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert expected in result.output


def test_bad_export_files_and_inputs_are_one_line(use_run, exported, tmp_path):
    """A truncated or damaged file, a file of another format under an export's name, a wrong image: one line."""
    single = tmp_path / "a.png"
    single.write_bytes(image_bytes(images(1, 0)[0]))
    whole = (exported / "model.pt2").read_bytes()
    cases = {"truncated.pt2": whole[: len(whole) // 2], "damaged.onnx": (exported / "model.onnx").read_bytes()[:999],
             "png.pt2": single.read_bytes(), "png.onnx": single.read_bytes(), "text.pt": b"hello"}
    import zipfile

    with zipfile.ZipFile(tmp_path / "zip.pt2", "w") as archive:
        archive.writestr("x/y.txt", "not a model")
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    for name in [*cases, "zip.pt2"]:
        result = runner.invoke(cli.app, ["score", str(single), "--model", str(tmp_path / name)])
        assert result.exit_code == 1 and "Traceback" not in result.output, (name, result.output)
        assert len(result.output.strip().splitlines()) == 1, (name, result.output)
        assert "exported DMR model" in result.output or "damaged" in result.output, (name, result.output)
    from dmr_core.serving.export import ExportedDetector

    detector = ExportedDetector.load(exported / "model.onnx")
    for bad in (np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 32, 32, 3), np.float32),
                np.zeros((1, 32, 32, 1), np.uint8)):
        with pytest.raises(ValueError, match="uint8 N×32×32×3"):
            detector.score(bad)
    assert detector.score(np.zeros((0, 32, 32, 3), np.uint8)) == {}
    result = runner.invoke(cli.app, ["export", str(tmp_path / "m.onnx"), "--format", "pt2"])
    assert result.exit_code == 2 and "names a onnx file" in result.output


class BrightnessScorer:
    """A stand-in detector whose DMR score is an image's mean brightness: the tests below are about reading and
    writing rows (the nets' scores are checked above), so the 100,000 images cost no forward passes."""

    class_names = ["dark", "bright"]
    combined = None
    image_size = 32

    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> dict:
        return {"source": "test", "threshold": 0.5, "keep": "0.95", "decision": "dmr", "combined": None}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        brightness = images.reshape(len(images), -1).mean(1) / 255
        return {"predicted": (brightness > 0.5).astype(int), "confidence": np.ones(len(images)),
                "dmr_score": brightness, "dmr_is_ood": brightness > 0.5, "is_ood": brightness > 0.5}


def _linked_folder(folder, count: int, bright_every: int = 10):
    """``count`` PNG files that are hard links to two files (dark, and bright for every ``bright_every``-th):
    100,000 names cost almost no disk (a new file every 50,000 links: file systems cap the links of one file)."""
    folder.mkdir()
    for i in range(count):
        if i % 50_000 == 0:
            dark, bright = (folder.parent / f"{folder.name}-{kind}-{i}.png" for kind in ("dark", "bright"))
            dark.write_bytes(image_bytes(np.full((32, 32, 3), 20, np.uint8)))
            bright.write_bytes(image_bytes(np.full((32, 32, 3), 230, np.uint8)))
        (folder / f"{i:06d}.png").hardlink_to(bright if i % bright_every == 0 else dark)


def _traced_score(args, monkeypatch) -> tuple[object, int]:
    """(the CLI's result, the peak of memory traced while it ran) with the stand-in detector."""
    import tracemalloc

    monkeypatch.setattr(cli, "_trained_detector", lambda *a, **k: BrightnessScorer())
    tracemalloc.start()
    try:
        result = runner.invoke(cli.app, ["score", *args])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def test_score_streams_100000_files_in_constant_memory(tmp_path, monkeypatch):
    """Rows are written a batch at a time and only counts are kept: scoring 100,000 files peaks at the memory
    of scoring 10,000 (a list of rows or of items would add tens of MB), and every row and count is right."""
    _linked_folder(tmp_path / "warm-up", 10)
    _linked_folder(tmp_path / "small", 10_000)
    _linked_folder(tmp_path / "large", 100_000)
    (tmp_path / "large" / "notes.txt").write_text("not an image")
    # the first run imports pandas and the rest, which would count in its peak (and PIL imports every plugin the
    # first time it fails to identify a file: the warm-up holds a non-image too)
    (tmp_path / "warm-up" / "notes.txt").write_text("not an image")
    assert _traced_score([str(tmp_path / "warm-up"), "--out", str(tmp_path / "w.csv")], monkeypatch)[0].exit_code == 0
    small, small_peak = _traced_score([str(tmp_path / "small"), "--out", str(tmp_path / "small.csv")], monkeypatch)
    assert small.exit_code == 0, small.output
    large, large_peak = _traced_score([str(tmp_path / "large"), "--out", str(tmp_path / "large.csv")], monkeypatch)
    assert large.exit_code == 0, large.output
    assert "scored 100000 image(s): 10000 OOD" in large.output and "1 unreadable" in large.output
    assert large_peak < small_peak + 2e6, (small_peak, large_peak)
    rows = pd.read_csv(tmp_path / "large.csv")
    assert len(rows) == 100_001 and rows["is_ood"].sum() == 10_000
    assert set(rows["path"]) == {str(path) for path in (tmp_path / "large").iterdir()}
    assert rows.loc[rows["error"].notna(), "path"].tolist() == [str(tmp_path / "large" / "notes.txt")]


def test_score_streams_a_tar_and_json_in_order_with_summary_last(tmp_path, monkeypatch):
    """A tar's members are read as they are met (in archive order), JSON rows stream with the summary written
    once it is known; members named outside the archive are refused by the data stage's rule, as rows."""
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        for i, name in enumerate(["b.png", "../escape.png", "a.png", "/abs.png", "sub/c.png"]):
            payload = image_bytes(np.full((32, 32, 3), 230 if i % 2 else 20, np.uint8))
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(cli, "_trained_detector", lambda *a, **k: BrightnessScorer())
    result = runner.invoke(cli.app, ["score", str(archive), "--out", str(tmp_path / "rows.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "rows.json").read_text())
    assert [row["path"].split(":", 1)[1] for row in payload["images"]] == [
        "b.png", "../escape.png", "a.png", "/abs.png", "sub/c.png"]
    errors = [row["error"] for row in payload["images"]]
    assert errors[0] is None and errors[2] is None and errors[4] is None
    assert "absolute or '..' path" in errors[1] and "absolute or '..' path" in errors[3]
    assert payload["summary"]["scored"] == 3 and payload["summary"]["unreadable"] == 2
    assert payload["summary"]["folders"] == {str(archive): {"scored": 3, "ood": 0, "unreadable": 2}}
    assert payload["model"]["source"] == "test"


def test_an_unwritable_out_fails_before_any_image_is_read(use_run, tmp_path, monkeypatch):
    from dmr_core.serving import inputs

    _linked_folder(tmp_path / "images", 20)
    decoded = []
    real_decode = inputs.decode_image
    monkeypatch.setattr(inputs, "decode_image", lambda payload: decoded.append(1) or real_decode(payload))
    (tmp_path / "a-file").write_text("")
    result = runner.invoke(cli.app, ["score", str(tmp_path / "images"), "--out", str(tmp_path / "a-file" / "r.csv")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "a-file" in result.output, result.output
    assert decoded == []


def _stored_scores(root) -> tuple[np.ndarray, np.ndarray]:
    return (zarr.open_group(str(root / "dmr.zarr"), mode="r")["id_test"][:],
            zarr.open_group(str(root / "combined.zarr"), mode="r")["id_test"][:])


@pytest.mark.parametrize("layer,feature", [("layer2", "feature_map"), ("auto", "penultimate")])
def test_a_head_on_another_layer_is_served_and_exported_as_it_was_trained(tmp_path_factory, monkeypatch, layer,
                                                                          feature):
    """The params that shape the head's input at other values than the defaults: features.layer: layer2 (a
    32×16×16 map, 8192 inputs), head.feature: penultimate (the 64-vector). The head carries both, so `dmr score`
    and every exported format build its input as it was trained on and reproduce the stored scores."""
    from dmr_core.serving.detector import TrainedDetector
    from dmr_core.serving.run import run_artifacts

    root, commands, sets = build_run(tmp_path_factory.mktemp(f"{layer}-{feature}"), layer=layer, feature=feature)
    dmr, combined = _stored_scores(root)
    assert json.loads((root / "eval.json").read_text())["feature"] == feature
    scores = TrainedDetector.load(run_artifacts(commands)).score(sets["id_test"])
    np.testing.assert_allclose(scores["dmr_score"], dmr, rtol=0, atol=1e-4)
    monkeypatch.setattr(cli, "pipeline_commands", lambda: commands)
    for suffix in (".pt2", ".onnx", ".pt"):
        path = root / f"model{suffix}"
        result = runner.invoke(cli.app, ["export", str(path)])
        assert result.exit_code == 0, result.output
        from dmr_core.serving.export import ExportedDetector

        out = ExportedDetector.load(path).score(sets["id_test"])
        fmt = {".pt2": "pt2", ".onnx": "onnx", ".pt": "torchscript"}[suffix]
        dmr_tolerance = TOLERANCE[fmt] * (1 + np.abs(dmr).max())
        np.testing.assert_allclose(out["dmr_score"], dmr, rtol=0, atol=dmr_tolerance)
        attrs = zarr.open_group(str(root / "combined.zarr"), mode="r").attrs
        np.testing.assert_allclose(out["combined_score"], combined, rtol=0,
                                   atol=combined_tolerance(attrs, dmr_tolerance))


def _copy_run(source, target) -> dict[str, str]:
    import shutil

    shutil.copytree(source, target)
    return build_commands(target)


def build_commands(root) -> dict[str, str]:
    return {
        "classifier": f"python -m stages.classifier --train {root / 'train.zarr'} --out {root / 'classifier.pt'}",
        "features": f"python -m stages.features --classifier {root / 'classifier.pt'} --out {root / 'features.zarr'}",
        "eval": f"python -m stages.eval --head {root / 'head.pt'} --scores {root / 'dmr.zarr'}",
        "combine": f"python -m stages.combine --features {root / 'features.zarr'} --scores {root / 'combined.zarr'}",
    }


def test_a_run_read_mid_update_is_the_old_run_whole_the_new_run_whole_or_one_line(run, tmp_path, monkeypatch):
    """`dvc repro` replaces the head, then DMR's scores (eval), then the combined score (combine), one file at a
    time: scoring at every step sees the old run whole, the new one whole, or refuses in one line — never the new
    head with the old thresholds. A classifier from elsewhere under the head is refused too."""
    import shutil

    from dmr_core.serving.detector import NoTrainedRun, TrainedDetector
    from dmr_core.serving.run import run_artifacts

    old_root, _, sets = run
    new_root, _, _ = build_run(tmp_path / "new", head_seed=2)
    live = tmp_path / "live"
    commands = _copy_run(old_root, live)
    monkeypatch.setattr(cli, "pipeline_commands", lambda: commands)
    seen = []
    for step in (None, "head.pt", "dmr.zarr", "combined.zarr"):
        if step is not None:
            target = live / step
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            (shutil.copytree if (new_root / step).is_dir() else shutil.copy)(new_root / step, target)
        try:
            scores = TrainedDetector.load(run_artifacts(commands)).score(sets["id_test"])
        except NoTrainedRun as err:
            assert "not one version" in str(err) and "\n" not in str(err)
            result = runner.invoke(cli.app, ["score", str(tmp_path / "new" / "classifier.pt")])
            assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
            seen.append("refused")
            continue
        for root, name in ((old_root, "old"), (new_root, "new")):
            dmr, combined = _stored_scores(root)
            if np.allclose(scores["dmr_score"], dmr, atol=1e-4) and np.allclose(scores["combined_score"], combined,
                                                                                atol=1e-3):
                seen.append(name)
                break
        else:
            raise AssertionError(f"after {step}: the scores are neither run's")
    assert seen == ["old", "refused", "refused", "new"]
    # a classifier that is not the one the head was trained on
    save_classifier(tiny_classifier(seed=3), "resnet20", live / "classifier.pt")
    with pytest.raises(NoTrainedRun, match="not one version"):
        TrainedDetector.load(run_artifacts(commands))


def _generated_batch(draw) -> tuple[np.ndarray, bool]:
    """An array a caller might hand an exported file, and whether it meets the uint8 N×32×32×3 contract."""
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.int64, np.bool_]))
    n = draw(st.sampled_from([0, 1, 3]))
    side = draw(st.sampled_from([32, 32, 31, 33]))
    channels = draw(st.sampled_from([3, 3, 1, 4]))
    shape = draw(st.sampled_from([(n, side, side, channels), (n, channels, side, side), (side, side, channels)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.uniform(-0.5, 1.5, shape) * draw(st.sampled_from([1, 255]))
    if np.issubdtype(dtype, np.floating) and values.size and draw(st.booleans()):
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    array = np.clip(values, 0, 255).astype(dtype) if dtype == np.uint8 else values.astype(dtype)
    return array, dtype == np.uint8 and len(shape) == 4 and shape[1:] == (32, 32, 3)


@st.composite
def generated_batches(draw):
    return _generated_batch(draw)


def _float_images(scale: float, nan: bool = False) -> np.ndarray:
    images = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32) * scale
    if nan:
        images[1, 0, 5, 5] = np.nan
    return images


@pytest.mark.parametrize("suffix", [".pt2", ".onnx", ".pt"])
@settings(max_examples=40, deadline=None)
@given(batch=generated_batches())
# the cases next to the contract, every run: float N×3×32×32 in [0, 1] (TorchScript's second layout), on the
# 0-255 scale, with a NaN; uint8 of the wrong layout; an empty batch
@example(batch=(_float_images(1.0), False))
@example(batch=(_float_images(255.0), False))
@example(batch=(_float_images(1.0, nan=True), False))
@example(batch=(np.zeros((2, 3, 32, 32), np.uint8), False))
@example(batch=(np.zeros((0, 32, 32, 3), np.uint8), True))
def test_exported_files_take_their_contract_and_refuse_the_rest(run, exported, suffix, batch):
    """Generated shapes, dtypes, ranges, NaN / inf and empty batches, through `dmr score --model`'s reader and the
    file's own runtime: an image of the contract gets finite scores, one row each; anything else is refused (the
    reader in one line naming the contract, the file itself by its runtime's error), never scored as it is."""
    images, meets = batch
    detector = _loaded(exported / f"model{suffix}")
    if meets:
        out = detector.score(images)
        assert (out == {}) if not len(images) else all(len(v) == len(images) for v in out.values())
        assert not len(images) or np.isfinite(out["dmr_score"]).all() and np.isfinite(out["combined_score"]).all()
    else:
        with pytest.raises(ValueError, match="uint8 N×32×32×3") as err:
            detector.score(images)
        assert "\n" not in str(err.value)
    raw = _raw_call(exported / f"model{suffix}")
    try:
        out = raw(images)
    except Exception:  # noqa: BLE001 -- each runtime refuses with its own error type
        assert not meets or not len(images), "the file refused an image of its contract"
        return
    # taken by the file: of the contract, or (TorchScript only) float N×3×32×32 in [0, 1], a NaN image flagged OOD
    nan_rows = np.isnan(images.reshape(len(images), -1)).any(1) if images.ndim == 4 and len(images) else None
    float_layout = (suffix == ".pt" and np.issubdtype(images.dtype, np.floating) and images.ndim == 4
                    and images.shape[1:] == (3, 32, 32))
    assert meets or float_layout, f"{suffix} scored {images.dtype} {images.shape} out of contract"
    if float_layout:
        finite = images[~nan_rows]
        assert ((finite >= 0) & (finite <= 1)).all(), "a float image outside [0, 1] was scored"
        assert out["is_ood"][nan_rows].all()
    assert len(out["dmr_score"]) == len(images)


@functools.lru_cache(maxsize=None)
def _loaded(path):
    from dmr_core.serving.export import ExportedDetector

    return ExportedDetector.load(path)


@functools.lru_cache(maxsize=None)
def _raw_call(path):
    """The exported file called by its own runtime alone, as a deployer calls it (loaded once per file)."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda x: dict(zip(names, session.run(names, {"images": x})))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation: the format is tested as shipped
        module = torch.export.load(str(path)).module() if path.suffix == ".pt2" else torch.jit.load(str(path))
    return lambda x: {k: v.numpy() for k, v in module(torch.from_numpy(np.ascontiguousarray(x))).items()}


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_a_48_px_detector_exports_its_size_in_every_format(tmp_path, fmt):
    """A run at data.image_size 48: each exported file states 48 in its metadata and contract, scores 48-px images
    as the detector does, and refuses 32-px ones in one line naming the size (TorchScript in the file itself)."""
    from dmr_core.nets.classifier import build_classifier, set_input_size
    from dmr_core.nets.rejection_head import RejectionHead
    from dmr_core.serving.detector import TrainedDetector
    from dmr_core.serving.export import SUFFIXES, ExportedDetector, export_detector

    torch.manual_seed(0)
    classifier = set_input_size(build_classifier("resnet20", num_classes=3).eval(), 48).set_max_grid(8)
    detector = TrainedDetector(classifier, RejectionHead(64 * 6 * 6, 16).eval(), "feature_map", 0.0)
    path = tmp_path / f"model{SUFFIXES[fmt]}"
    meta = export_detector(path, detector.export_graph(), ["a", "b", "c"], fmt)
    assert meta["image_size"] == 48 and meta["input"].startswith("uint8 N×48×48×3")
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    exported = ExportedDetector.load(path)
    tolerance = 1e-3 if fmt == "onnx" else 1e-4
    np.testing.assert_allclose(exported.score(images)["dmr_score"], detector.score(images)["dmr_score"],
                               rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="uint8 N×48×48×3"):
        exported.score(np.zeros((1, 32, 32, 3), np.uint8))
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        with pytest.raises(Exception, match="uint8 images must be N×48×48×3 \\(RGB\\); resize to 48×48 first"):
            module(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
        with pytest.raises(Exception, match="float N×3×48×48 in \\[0, 1\\]"):
            module(torch.zeros(1, 3, 32, 32))
