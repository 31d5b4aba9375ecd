"""Params are validated before any work; each bad value is one line naming key, value and allowed range."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmr_core.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(section: str, key: str, value):
    raw = copy.deepcopy(DEFAULTS)
    raw[section][key] = value
    return raw


def test_defaults_are_valid():
    params = parse_params(DEFAULTS)
    assert params.synth.k == 2 and params.synth.method == "dmr_mlm" and params.synth.detail == "residual_dmr"


@pytest.mark.parametrize("section,key,value,expected", [
    ("synth", "k", 11, r"synth\.k = 11: .*less than or equal to 10"),
    ("synth", "k", 0, r"synth\.k = 0: .*greater than or equal to 1"),
    ("synth", "lambda_min", 0.0, r"synth\.lambda_min = 0\.0: .*greater than 0"),
    ("synth", "lambda_max", -1.0, r"synth\.lambda_max = -1\.0: .*greater than 0"),
    ("synth", "lambda_min", 1000.0, r"synth: lambda_min = 1000\.0 > lambda_max = \d"),
    ("synth_baselines", "lambda_min", 4.0, r"synth_baselines: lambda_min = 4\.0 > lambda_max = 3\.0"),
    ("synth_baselines", "variants", ["gan"], r"synth_baselines\.variants\.0 = 'gan'"),
    ("baselines", "detectors", ["MSP", "Foo"], r"baselines\.detectors\.1 = 'Foo'"),
    ("synth", "num_samples", -5, r"synth\.num_samples = -5: .*greater than or equal to 1"),
    ("synth", "method", "magic", r"synth\.method = 'magic': .*'mlm', 'dmr' or 'dmr_mlm'"),
    ("synth", "lambda_dist", "normal", r"synth\.lambda_dist = 'normal'"),
    ("classifier", "arch", "resnet18", r"classifier\.arch = 'resnet18': .*resnet20"),
    ("data", "ood_sets", ["icons", "mnist"], r"data\.ood_sets\.1 = 'mnist'"),
    ("data", "train_per_class", -1, r"data\.train_per_class = -1"),
    ("head", "batch_size", 0, r"head\.batch_size = 0"),
    ("head", "feature", "pixels", r"head\.feature = 'pixels'"),
    ("generator", "kind", "stylegan", r"generator\.kind = 'stylegan'"),
])
def test_bad_values_are_named(section, key, value, expected):
    with pytest.raises(ParamsError, match=expected) as info:
        parse_params(with_value(section, key, value))
    assert "\n" not in str(info.value)


def test_dmr_single_needs_k_1():
    raw = with_value("synth", "method", "dmr")
    with pytest.raises(ParamsError, match=r"k = 2 with method 'dmr'"):
        parse_params(raw)
    raw["synth"]["k"] = 1
    assert parse_params(raw).synth.k == 1


def test_missing_and_unknown_keys():
    raw = copy.deepcopy(DEFAULTS)
    del raw["head"]["epochs"]
    with pytest.raises(ParamsError, match=r"head\.epochs: missing key"):
        parse_params(raw)
    raw = with_value("synth", "lamda_max", 2)
    with pytest.raises(ParamsError, match=r"synth\.lamda_max: unknown key"):
        parse_params(raw)
    raw = copy.deepcopy(DEFAULTS)
    del raw["eval"]
    with pytest.raises(ParamsError, match=r"^invalid params: eval: missing key"):
        parse_params(raw)


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("synth: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_stage_fails_before_work_with_one_line(tmp_path):
    """A stage run with a bad param exits 1 with a one-line message and writes nothing."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("synth", "k", 11)))
    command = [sys.executable, "-m", "stages.data", "--out", "data/datasets", "--metrics", "metrics/data.json"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error in stage data: invalid params: synth.k = 11: Input should be less than or equal to 10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_detail_fraction_must_be_a_share():
    raw = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    raw["synth"]["detail_fraction"] = 0
    with pytest.raises(ParamsError, match=r"synth\.detail_fraction = 0: .*greater than 0"):
        parse_params(raw)
    raw["synth"]["detail_fraction"] = 1.5
    with pytest.raises(ParamsError, match=r"synth\.detail_fraction = 1\.5: .*less than or equal to 1"):
        parse_params(raw)


@pytest.mark.parametrize("term", ["adversarial", "perceptual"])
def test_generator_term_must_start_before_the_last_epoch(term):
    raw = copy.deepcopy(DEFAULTS)
    epochs = raw["generator"]["epochs"]
    raw["generator"].update({f"{term}_weight": 1.0, f"{term}_start_epoch": epochs})
    with pytest.raises(ParamsError, match=f"{term}_start_epoch = {epochs} with epochs = {epochs}: the {term} term"):
        parse_params(raw)
    raw["generator"][f"{term}_weight"] = 0.0  # off: the start epoch does not matter
    parse_params(raw)


def test_spatial_latent_must_fill_the_grid():
    raw = copy.deepcopy(DEFAULTS)
    raw["generator"].update({"kind": "spatial_vae", "latent_dim": 100})
    with pytest.raises(ParamsError, match="latent_dim = 100 with kind spatial_vae: .*multiple of 16"):
        parse_params(raw)
    raw["generator"]["latent_dim"] = 256
    parse_params(raw)


def test_cross_section_rules_are_validated():
    """combine.detector must be among the scored detectors: `dmr check-params` says so, not the combine stage."""
    raw = with_value("baselines", "detectors", ["MSP", "Energy"])
    with pytest.raises(ParamsError, match=r"combine\.detector = 'KNN' is not among baselines\.detectors"):
        parse_params(raw)
    raw["combine"]["detector"] = "none"
    assert parse_params(raw).combine.detector == "none"


def test_sections_build_the_library_configs():
    from dmr_core.training.head import HeadConfig

    params = parse_params(DEFAULTS)
    config = params.head.to(HeadConfig)
    assert config.hidden == DEFAULTS["head"]["hidden"] and config.input_dropout == DEFAULTS["head"]["input_dropout"]
