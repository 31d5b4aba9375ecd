"""The experiment profiles (one per configuration of the paper's tables): each composes over params.yaml and
validates, holds the paper's recipe, names a paper table the report really compares with, and `dmr exp` turns it
into the `dvc exp run` command that sets exactly the validated values."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
import yaml
from helpers import DEFAULTS, GIT_IDENTITY, ROOT
from typer.testing import CliRunner

from dmr_core import cli
from dmr_core.cli import app
from dmr_core.errors import ParamsError
from dmr_core.evaluation.report import ABLATION_TABLE, MEAN_AUROC_TABLE, paper_reference, paper_tables
from dmr_core.params import parse_params
from dmr_core.profiles import compose as profiles
from dmr_core.profiles.compose import (
    NEEDS,
    changed_overrides,
    compose_overrides,
    compose_params,
    exp_run_command,
    free_name,
    load_profile,
    override_value,
    parse_assignment,
    profile_names,
)

NAMES = profile_names()
# the profiles that reproduce a table of the paper (the others run the default recipe on something else)
PAPER_NAMES = [name for name in NAMES if not load_profile(name).paper.startswith("none")]
runner = CliRunner()


def composed(name: str) -> dict:
    return compose_params(DEFAULTS, load_profile(name))


def test_the_paper_tables_each_have_their_profiles():
    assert {"table1_cifar10_wrn40_2", "table2_cifar100_wrn40_2", "table4_cifar100_wrn40_2", "gpu_paper_scale",
            "table5_cifar10_resnet50", "table5_cifar10_densenet121"} <= set(NAMES)
    assert {f"table3_cifar10_wrn40_2_{m}" for m in ("mlm", "dmr", "dmr_mlm")} <= set(NAMES)
    assert not any(name.startswith("_") for name in NAMES)
    assert "_paper" in profile_names(bases=True)


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_composes_over_params_yaml_and_validates(name):
    profile = load_profile(name)
    params = parse_params(composed(name))
    assert profile.paper and profile.note and set(profile.needs) <= set(NEEDS)
    for dotted, value in profile.params.items():  # every override reached the validated params
        section, key = dotted.split(".")
        assert getattr(getattr(params, section), key) == value, dotted
    # what it says it needs follows from what it runs
    downloads = params.data.ood_sets == "paper" or params.data.id_set == "cifar100"
    assert ("internet" in profile.needs) == downloads, name
    assert ("gpu" in profile.needs) == (params.classifier.init == "scratch" and params.classifier.arch in
                                        ("wrn40_2", "resnet50", "densenet121") and params.classifier.epochs >= 10)


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_every_paper_profile_runs_the_paper_recipe(name):
    p = parse_params(composed(name))
    c, h = p.classifier, p.head
    assert (c.init, c.lr, c.momentum, c.weight_decay, c.batch_size) == ("scratch", 0.1, 0.9, 5e-4, 128)
    assert c.dropout == (0.3 if c.arch == "wrn40_2" else 0.0)
    assert c.epochs == (15 if name == "gpu_paper_scale" else 100)
    assert (h.feature, h.hidden, h.epochs, h.batch_size, h.lr, h.momentum, h.nesterov, h.weight_decay, h.schedule,
            h.input_dropout) == ("feature_map", 2048, 10, 128, 0.01, 0.8, True, 4e-4, "cosine", 0.0)
    assert p.features.layer == "auto" and (p.synth.num_samples, p.synth.detail) == (50000, "none")
    assert (p.data.train_per_class, p.data.test_per_class) == (0, 0)


def test_table1_is_the_single_variant_the_authors_reported_and_table3_varies_only_the_synthesis():
    s = parse_params(composed("table1_cifar10_wrn40_2")).synth
    assert (s.method, s.k, s.lambda_dist, s.lambda_min, s.lambda_max) == ("dmr", 1, "choice", 1.0, 3.0)
    table1 = composed("table1_cifar10_wrn40_2")
    for method, k in (("mlm", 5), ("dmr", 1), ("dmr_mlm", 5)):
        row = composed(f"table3_cifar10_wrn40_2_{method}")
        assert (row["synth"]["method"], row["synth"]["k"]) == (method, k)
        assert {section: values for section, values in row.items() if section != "synth"} == \
               {section: values for section, values in table1.items() if section != "synth"}
    gpu = composed("gpu_paper_scale")
    differing = {f"{section}.{key}" for section in gpu for key in gpu[section] if gpu[section][key] != table1[section][key]}
    assert differing == {"data.ood_sets", "classifier.epochs", "synth_baselines.variants"}


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_the_report_compares_every_paper_profile_with_the_table_it_names(name):
    """The paper table named in a profile's `paper` line is one the report picks for its ID set and classifier."""
    params = parse_params(composed(name))
    ref = paper_reference(paper_tables(), params.data.id_set, params.classifier.arch)
    assert ref is not None, name
    titles = [title for _, title in ref.per_set] + [MEAN_AUROC_TABLE[1]] * ref.mean_auroc \
        + [ABLATION_TABLE[1]] * ref.ablation
    named = load_profile(name).paper.split(" (")[0]
    assert named in titles, (name, titles)


def test_an_unknown_profile_a_base_and_a_bad_file_are_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match=r"unknown profile 'nope'; `dmr profiles` lists them \(.*gpu_paper_scale, "):
        load_profile("nope")
    with pytest.raises(ParamsError, match="'_paper' is a base that other profiles extend, not an experiment"):
        load_profile("_paper")
    (tmp_path / "a.yaml").write_text("paper: x\nnote: y\nextends: b\nparams: {synth.k: 1}\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    (tmp_path / "c.yaml").write_text("paper: x\nnote: y\nneeds: [a_tpu]\n")
    (tmp_path / "d.yaml").write_text("paper: x\nnote: y\nparams: {synth: {k: 1}}\n")
    monkeypatch.setattr(profiles, "_folder", lambda: tmp_path)
    profiles._read.cache_clear()
    try:
        with pytest.raises(ParamsError, match=r"profile 'a' extends itself through a -> b -> a"):
            load_profile("a")
        with pytest.raises(ParamsError, match=r"profile 'c' \(c\.yaml\) is malformed: .*needs\.0") as info:
            load_profile("c")
        assert "\n" not in str(info.value)
        with pytest.raises(ParamsError, match=r"profile 'd': 'synth' is not a params key; write section\.key"):
            load_profile("d")
    finally:
        profiles._read.cache_clear()


def test_assignments_read_as_dvc_reads_them_and_values_are_written_back_the_same():
    assert parse_assignment("classifier.epochs=30") == ("classifier.epochs", 30)
    assert parse_assignment("synth.lambda_max=3") == ("synth.lambda_max", 3)
    assert parse_assignment("synth_baselines.variants=[mlm,dmr]") == ("synth_baselines.variants", ["mlm", "dmr"])
    assert parse_assignment("classifier.checkpoint=null") == ("classifier.checkpoint", None)
    assert parse_assignment("data.id_set='~/my data'") == ("data.id_set", "~/my data")
    for bad, message in (("classifier.epochs", "write key=value"), ("epochs=3", "not a params key"),
                         ("a.b.c=1", "not a params key"), ("data.id_set=~/x", "not a value DVC can read"),
                         ("+synth.extra=1", "only plain key=value")):
        with pytest.raises(ParamsError, match=message):
            parse_assignment(bad)
    for value in (3, 0.0005, 1e-05, 3.0, True, False, None, "cifar10", "~/my data", "it's", "a\\b", "1.5", "true",
                  "", "torchvision:resnet18", ["mlm", "dmr"], [], [1, 2.5], ["a b", "null"]):
        _, parsed = parse_assignment(f"synth.k={override_value(value)}")
        assert parsed == value and type(parsed) is type(value), (value, override_value(value))
    with pytest.raises(ParamsError, match="of type dict"):
        override_value({"a": 1})


@pytest.mark.parametrize("name", ["table1_cifar10_wrn40_2", "table2_cifar100_wrn40_2", "gpu_paper_scale"])
def test_dvc_applying_the_command_sets_exactly_the_validated_params(name, tmp_path):
    """What `dvc exp run -S` does to params.yaml (DVC's own function), given the command's -S values, is the
    composition that was validated."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    command = exp_run_command(name, changed_overrides(DEFAULTS, load_profile(name).params))
    assert command[:5] == ["dvc", "exp", "run", "-n", name]
    apply_overrides(path, [command[i + 1] for i, arg in enumerate(command) if arg == "-S"])
    assert yaml.safe_load(path.read_text()) == composed(name)


def test_only_the_values_that_differ_from_params_yaml_are_passed():
    changed = changed_overrides(DEFAULTS, {"classifier.lr": 0.01, "classifier.epochs": 3, "head.nesterov": True,
                                           "head.momentum": 0.9, "synth.k": 2.0, "eval.roc_points": True})
    assert changed == {"classifier.epochs": 3, "eval.roc_points": True}  # true is not the number 200
    assert exp_run_command("x", {"a.b": [1, "c"]}, queue=True) == ["dvc", "exp", "run", "-n", "x", "--queue",
                                                                     "-S", "a.b=[1,c]"]
    assert free_name("t", []) == "t" and free_name("t", ["t", "t-2", "u"]) == "t-3"


def test_dmr_profiles_lists_every_profile_with_its_table_and_needs():
    result = runner.invoke(app, ["profiles"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == NAMES
    first = lines.index("table4_cifar100_wrn40_2  (needs gpu, internet)")
    assert lines[first + 1].startswith("    Table 4 (CIFAR-100, WRN-40-2), the DMR row")
    assert "gpu_paper_scale  (needs gpu)" in lines
    assert "baselines.oe_outliers" in result.output  # Table 2's OE row, still to come


def _git(cwd, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, **GIT_IDENTITY}).stdout.strip()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git repository holding params.yaml, the current folder, as `dmr exp` runs in a project root."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "params.yaml")
    _git(tmp_path, "commit", "-qm", "params")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dmr_exp_validates_and_prints_the_dvc_command(project):
    result = runner.invoke(app, ["exp", "table5_cifar10_resnet50", "-S", "classifier.epochs=30", "--queue",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    overrides = compose_overrides(load_profile("table5_cifar10_resnet50"), [("classifier.epochs", 30)])
    assert list(overrides)[-1] == "classifier.epochs"  # the user's values come last
    expected = exp_run_command("table5_cifar10_resnet50", changed_overrides(DEFAULTS, overrides), queue=True)
    assert result.output.splitlines()[-1] == "$ " + shlex.join(expected)
    assert "needs the internet" in result.output
    for args, message in (
            (["table1_cifar10_wrn40_2", "-S", "classifier.arch=resnet20"],
             ("profile table1_cifar10_wrn40_2: invalid params: classifier.dropout = 0.3 with classifier.arch = "
              "'resnet20': only wrn40_2 has a dropout; set classifier.dropout: 0")),
            (["table1_cifar10_wrn40_2", "-S", "synth.kk=3"], "invalid params: synth.kk: unknown key"),
            (["nope"], "profile nope: unknown profile 'nope'")):
        failed = runner.invoke(app, ["exp", *args, "--dry-run"])
        assert failed.exit_code == 1 and len(failed.output.strip().splitlines()) == 1, failed.output
        assert message in failed.output


def test_a_taken_name_gets_a_suffix_or_is_replaced(project):
    """DVC refuses a second experiment of one name on the same commit (`dvc exp run -f` would also re-run every
    stage): the new one gets the next free name, or --replace removes the old one first."""
    head = _git(project, "rev-parse", "HEAD")
    for taken in ("gpu_paper_scale", "gpu_paper_scale-2"):
        _git(project, "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{taken}", head)
    assert cli.experiments_on_head() == {"gpu_paper_scale", "gpu_paper_scale-2"}
    result = runner.invoke(app, ["exp", "gpu_paper_scale", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "an experiment named 'gpu_paper_scale' exists on this commit; this one is 'gpu_paper_scale-3'" in result.output
    assert result.output.splitlines()[-1].startswith("$ dvc exp run -n gpu_paper_scale-3 -S ")
    result = runner.invoke(app, ["exp", "gpu_paper_scale", "--replace", "--dry-run"])
    commands = [line for line in result.output.splitlines() if line.startswith("$ ")]
    assert commands[0] == "$ dvc exp remove gpu_paper_scale"
    assert commands[1].startswith("$ dvc exp run -n gpu_paper_scale -S ")


def test_dmr_exp_runs_the_commands_and_passes_on_their_failure(project, monkeypatch):
    ran = []
    real_run = subprocess.run

    def fake_run(argv, *args, **kwargs):
        if argv[0] != "dvc":
            return real_run(argv, *args, **kwargs)
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 3 if argv[2] == "run" else 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    result = runner.invoke(app, ["exp", "table3_cifar10_wrn40_2_mlm", "-n", "mine"])
    assert result.exit_code == 3 and [argv[:5] for argv in ran] == [["dvc", "exp", "run", "-n", "mine"]]


def test_the_benchmark_counts_the_images_each_stage_processes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params = composed("gpu_paper_scale")
    images = bench.stage_images(params, n_train=50000, n_test=10000, n_ood=45600)
    assert images["classifier"] == 50000 * 15 + 10000  # 15 epochs, then the test accuracy
    assert images["rejection_head"] == (50000 + 50000) * 10 + 50000  # the synthesised set's features, 10 epochs
    assert images["features"] == 50000 + 10000 + 45600 and images["eval"] == 10000 + 45600
    assert images["synth_baseline@dmr"] == 50000 + (50000 + 50000) * 10
    assert {"perceptual_net", "figures", "report"}.isdisjoint(images)  # no images of their own: no rate
    assert [s for s in images if s.startswith("synth_baseline@")] == ["synth_baseline@mlm", "synth_baseline@dmr"]
