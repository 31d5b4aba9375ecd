"""The `dmr` command: check-params, summary and stage on good, missing and malformed inputs."""

import json
import re

import pytest
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


def _one_line_failure(result, code: int = 1) -> str:
    """The command exited with ``code`` through typer (not an escaped exception) and said one line."""
    assert type(result.exception) is SystemExit and result.exit_code == code, (result.exception, result.output)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


PER_SET = {"AUROC": 90.0, "AUPR-IN": 1.0, "AUPR-OUT": 1.0, "FPR95TPR": 1.0}


@pytest.mark.parametrize("name,content,expected", [
    ("eval.json", b"{not json", r"eval\.json is not valid JSON \(Expecting property name .* line 1, column 2\)"),
    ("eval.json", b"", r"eval\.json is not valid JSON"),
    ("eval.json", b"\xff\xfe", r"eval\.json is not UTF-8 text"),
    ("eval.json", b"[1, 2]", r"eval\.json: DMR's metrics is a list, not a mapping of OOD sets"),
    ("eval.json", b"{\"method\": \"DMR\"}", r"eval\.json holds no per-set metrics"),
    ("eval.json", json.dumps({"icons": {"AUPR-IN": 1.0}}).encode(), r"set 'icons' has no numeric AUROC"),
    ("eval.json", json.dumps({"icons": {"AUROC": "high"}}).encode(), r"set 'icons' has no numeric AUROC"),
    ("eval.json", b"[" * 100000, r"eval\.json is not valid JSON"),
    ("baselines.json", b"{}", r"baselines\.json has no mapping 'detectors'"),
    ("baselines.json", json.dumps({"detectors": ["KNN"]}).encode(), r"baselines\.json has no mapping 'detectors'"),
    ("baselines.json", json.dumps({"detectors": {"KNN": [1]}}).encode(), r"baselines\.json: KNN is a list"),
    ("baselines.json", json.dumps({"detectors": {"KNN": {"icons": {}}}}).encode(),
     r"baselines\.json: KNN, set 'icons' has no numeric AUROC"),
    ("combined.json", b"[]", r"combined\.json is not a combined score's metrics"),
    ("combined.json", json.dumps({"method": 3}).encode(), r"combined\.json is not a combined score's metrics"),
    ("combined.json", json.dumps({"method": "DMR + KNN", "icons": {"AUROC": None}}).encode(),
     r"combined\.json: DMR \+ KNN, set 'icons' has no numeric AUROC"),
])
def test_summary_of_malformed_metrics_is_one_line(tmp_path, name, content, expected):
    _metrics(tmp_path)
    (tmp_path / name).write_bytes(content)
    line = _one_line_failure(runner.invoke(app, ["summary", "--metrics-dir", str(tmp_path)]))
    assert re.search(expected, line), line


def test_summary_of_a_folder_in_place_of_a_metrics_file(tmp_path):
    _metrics(tmp_path)
    (tmp_path / "eval.json").unlink()
    (tmp_path / "eval.json").mkdir()
    line = _one_line_failure(runner.invoke(app, ["summary", "--metrics-dir", str(tmp_path)]))
    assert line.startswith("cannot read ") and "eval.json" in line


def test_summary_marks_a_set_a_method_lacks(tmp_path):
    _metrics(tmp_path)
    (tmp_path / "baselines.json").write_text(json.dumps({"detectors": {"KNN": {"icons": PER_SET}}}))
    result = runner.invoke(app, ["summary", "--metrics-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2].split() == ["KNN", "90.00", "–"]


@pytest.mark.parametrize("content,expected", [
    (None, r"params\.yaml not found; run from the project root"),
    (b"synth: {k: 2\xff}", r"is not UTF-8 text"),
    (b"synth: [unclosed", r"is not valid YAML: expected ',' or '\]', but got '<stream end>' \(line 1, column 17\)"),
    (b"synth: {k: 2\n  x: [", r"is not valid YAML"),
    (b"", r"params\.yaml is empty"),
    (b"- a\n- b\n", r"holds a list, not a mapping of sections"),
    (b"data: 1\ndata: 2\n", r"key 'data' is given twice"),
])
def test_check_params_on_unusable_files(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    if content is not None:
        path.write_bytes(content)
    line = _one_line_failure(runner.invoke(app, ["check-params", "--path", str(path)]))
    assert line.startswith("invalid params: ") and re.search(expected, line), line


def test_check_params_on_a_folder(tmp_path):
    line = _one_line_failure(runner.invoke(app, ["check-params", "--path", str(tmp_path)]))
    assert line == f"invalid params: {tmp_path} is a folder, not a params file; name the params.yaml file"


@pytest.mark.parametrize("section,key,value,expected", [
    ("synth", "lambda_max", float("inf"), "invalid params: synth.lambda_max = inf: Input should be a finite number"),
    ("baselines", "vim_dim", 64,
     "invalid params: baselines.vim_dim = 64: must be below the penultimate size of resnet20 (64)"),
    ("data", "ood_sets", ["icons", "icons"],
     "invalid params: data.ood_sets = ['icons', 'icons']: 'icons' is listed twice"),
])
def test_check_params_refuses_what_the_stages_would(tmp_path, section, key, value, expected):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = _one_line_failure(runner.invoke(app, ["check-params", "--path", str(tmp_path / "params.yaml")]))
    assert line.startswith(expected), line


def test_stage_outside_a_project_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line_failure(runner.invoke(app, ["stage", "eval"]), code=2)
    assert line.startswith("cannot read the pipeline here (") and line.endswith("run from the project root")


def test_stage_unknown_is_one_line(monkeypatch):
    monkeypatch.chdir(ROOT)
    line = _one_line_failure(runner.invoke(app, ["stage", "no_such_stage"]), code=2)
    assert line.startswith("unknown stage 'no_such_stage'; choose from data, classifier")
