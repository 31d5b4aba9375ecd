"""The real DVC pipeline on a tiny subset: every stage runs, λ-only changes re-run only what follows."""

import json

import pytest

from conftest import make_tiny_project, needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]

ALL_STAGES = {"data", "classifier", "generator", "latents", "class_means", "ood_synth", "features",
              "rejection_head", "eval"}
DOWNSTREAM_OF_SYNTH = {"ood_synth", "rejection_head", "eval"}


def test_full_pipeline_produces_metrics_and_plots(tiny_project):
    metrics = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    for name in ("textures_partial", "icons", "scenes_crop", "gaussian", "gaussian_raw", "mean"):
        assert 0.0 <= metrics[name]["AUROC"] <= 100.0
    assert json.loads((tiny_project / "metrics" / "classifier.json").read_text())["test_accuracy"] > 30
    for plot in ("generator/recon.png", "ood_synth/samples.png", "eval/roc.png", "eval/score_histograms.png",
                 "eval/roc/icons.csv"):
        assert (tiny_project / "plots" / plot).stat().st_size > 0
    status = run(["dvc", "status"], tiny_project).stdout
    assert "up to date" in status


def test_second_repro_does_nothing(tiny_project):
    assert stages_run(run(["dvc", "repro"], tiny_project).stdout) == []


def test_lambda_change_reruns_only_synthesis_head_and_eval(tiny_project):
    before = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    result = run(["dvc", "exp", "run", "-S", "synth.lambda_max=2"], tiny_project)
    ran = set(stages_run(result.stdout))
    assert ran == DOWNSTREAM_OF_SYNTH, result.stdout
    skipped = ALL_STAGES - ran
    for stage in skipped:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    after = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    assert after != before  # a different synthesised set gives a different head
    diff = run(["dvc", "metrics", "diff"], tiny_project).stdout
    assert "metrics/eval.json" in diff


def test_same_seed_gives_identical_metrics(tiny_project, tmp_path):
    """An independent second run gives byte-identical metrics; another synth seed changes the synthesised set."""
    import zarr

    other = make_tiny_project(tmp_path)
    run(["dvc", "repro"], other)
    first = tiny_project / ".first_run_metrics"
    names = sorted(p.name for p in first.glob("*.json"))
    assert {"data.json", "classifier.json", "generator.json", "rejection_head.json", "eval.json"} <= set(names)
    for name in names:
        assert (other / "metrics" / name).read_text() == (first / name).read_text(), name

    def synth_images():
        return zarr.open_group(str(other / "data" / "ood_synth.zarr"), mode="r")["images"][:]

    before = synth_images()
    result = run(["dvc", "exp", "run", "-S", "synth.seed=1"], other)
    assert set(stages_run(result.stdout)) == DOWNSTREAM_OF_SYNTH
    after = synth_images()
    assert before.shape == after.shape and (before != after).any()
