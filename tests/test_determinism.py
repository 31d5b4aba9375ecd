"""Every stage is deterministic given its seed; an up-to-date pipeline does no work."""

import pytest
from helpers import DOWNSTREAM_OF_SYNTH, make_tiny_project, needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]


def test_second_repro_does_nothing(tiny_project):
    assert stages_run(run(["dvc", "repro"], tiny_project).stdout) == []


def test_same_seed_gives_identical_metrics(tiny_project, tmp_path):
    """An independent second run gives byte-identical metrics; another synth seed changes the synthesised set."""
    import zarr

    other = make_tiny_project(tmp_path)
    run(["dvc", "repro"], other)
    first = tiny_project / ".first_run_metrics"
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*.json"))
    assert {"data.json", "classifier.json", "generator.json", "rejection_head.json", "eval.json", "baselines.json",
            "synth_baselines/kirby.json"} <= set(names)
    for name in names:
        assert (other / "metrics" / name).read_text() == (first / name).read_text(), name
    assert (other / "metrics" / "report.md").read_text() == (first / "report.md").read_text()

    def synth_images():
        return zarr.open_group(str(other / "data" / "ood_synth.zarr"), mode="r")["images"][:]

    before = synth_images()
    result = run(["dvc", "exp", "run", "-S", "synth.seed=1"], other)
    assert set(stages_run(result.stdout)) == DOWNSTREAM_OF_SYNTH
    after = synth_images()
    assert before.shape == after.shape and (before != after).any()
