"""The `dmr` command: check-params, summary and stage on good, missing and malformed inputs."""

import json

import yaml
from helpers import ROOT
from typer.testing import CliRunner

from dmr_core.cli import app

runner = CliRunner()


def _metrics(tmp_path, combined: dict | None = None):
    per_set = {"AUROC": 90.0, "AUPR-IN": 1.0, "AUPR-OUT": 1.0, "FPR95TPR": 1.0}
    (tmp_path / "eval.json").write_text(json.dumps({"method": "DMR", "feature": "feature_map", "icons": per_set,
                                                    "mean": per_set}))
    (tmp_path / "baselines.json").write_text(json.dumps({"detectors": {"KNN": {"icons": {**per_set, "AUROC": 80.0},
                                                                               "mean": per_set}}}))
    if combined is not None:
        (tmp_path / "combined.json").write_text(json.dumps(combined))
    return tmp_path


def test_summary_lists_dmr_the_combined_row_and_the_baselines(tmp_path):
    per_set = {"AUROC": 95.5, "AUPR-IN": 1.0, "AUPR-OUT": 1.0, "FPR95TPR": 1.0}
    result = runner.invoke(app, ["summary", "--metrics-dir",
                                 str(_metrics(tmp_path, {"method": "DMR + KNN", "icons": per_set, "mean": per_set}))])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["method", "icons", "mean"]
    assert lines[1].split() == ["DMR", "90.00", "90.00"]
    assert lines[2].split()[-2:] == ["95.50", "95.50"] and lines[2].startswith("DMR + KNN")
    assert lines[3].split() == ["KNN", "80.00", "90.00"]


def test_summary_without_a_combined_score_or_any_results(tmp_path):
    result = runner.invoke(app, ["summary", "--metrics-dir", str(_metrics(tmp_path, {"method": None}))])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["summary", "--metrics-dir", str(empty)])
    assert result.exit_code == 1 and "run `dvc repro` first" in result.output


def test_check_params_accepts_the_defaults_and_names_a_bad_key(tmp_path):
    assert runner.invoke(app, ["check-params", "--path", str(ROOT / "params.yaml")]).exit_code == 0
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["baselines"]["detectors"] = ["MSP"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["check-params", "--path", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "invalid params: combine.detector = 'KNN' is not among baselines.detectors; add it there or set "
        "combine.detector: none"]


def test_stage_names_the_stages_of_the_pipeline(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["stage", "no_such_stage"])
    assert result.exit_code == 2
    assert "unknown stage 'no_such_stage'" in result.output and "synth_baseline@kirby" in result.output
