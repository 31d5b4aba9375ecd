"""Scaling out on DVC's own engines, in a committed copy of the tiny project: a shared remote (a plain directory
and an S3-compatible server) that a fresh clone pulls the trained models from, a queued parameter sweep, and the
training curves as DVC plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import copy_project, needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]

CURVES = {"classifier": ("classifier", ["loss", "accuracy"]), "generator": ("generator", ["loss"]),
          "rejection_head": ("head", ["loss", "accuracy"])}  # curve file -> (its params section, its columns)
MODELS = ["data/models/classifier.pt", "data/models/generator.pt", "data/models/rejection_head.pt"]
UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture(scope="module")
def committed(tiny_project: Path, tmp_path_factory) -> Path:
    """The tiny project with its trained results committed, as a team's repository is after `dvc repro`; a copy,
    so that the remotes and experiments added here leave the session's project alone."""
    origin = tmp_path_factory.mktemp("origin") / "project"
    copy_project(tiny_project, origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "trained"], origin)
    assert UP_TO_DATE in run(["dvc", "status"], origin).stdout
    return origin


def test_training_curves_have_a_row_per_epoch_and_are_dvc_plots(tiny_project, tmp_path):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    # -o: the image plots it copies go there, not into the project
    shown = json.loads(run(["dvc", "plots", "show", "--json", "-o", str(tmp_path)], tiny_project).stdout)["data"]
    for stage, (section, columns) in CURVES.items():
        table = pd.read_csv(tiny_project / "plots" / "training" / f"{stage}.csv")
        assert list(table.columns) == ["epoch", *columns]
        assert table["epoch"].tolist() == list(range(1, params[section]["epochs"] + 1))
        # the curve is the history the stage's metrics record
        recorded = json.loads((tiny_project / "metrics" / f"{stage}.json").read_text())["train_loss_per_epoch"]
        assert table["loss"].tolist() == pytest.approx(recorded, abs=1e-3)
        if "accuracy" in columns:
            assert table["accuracy"].between(0, 100).all()
        for column in columns:
            (plot,) = shown[f"{stage}_{column}"]
            rows = plot["content"]["data"]["values"]
            assert [float(row[column]) for row in rows] == pytest.approx(table[column].tolist())


@pytest.fixture
def s3_server(monkeypatch, tmp_path):
    """An S3-compatible server (moto's server mode) on a free localhost port, with dummy credentials in the
    environment the DVC commands inherit (and no AWS config file or instance metadata to look up); stopped after
    the test."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("dvc_s3", reason="needs dvc[s3] (pip install -e '.[test]')")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: a free port
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket="dmr-team")
    try:
        yield url, client
    finally:
        server.stop()


def test_a_fresh_clone_pulls_the_trained_models_from_a_directory_and_an_s3_remote(committed, s3_server, tmp_path):
    url, client = s3_server
    run(["dvc", "remote", "add", "-d", "team-dir", str(tmp_path / "team-remote")], committed)
    run(["dvc", "remote", "add", "team-s3", "s3://dmr-team/dvc"], committed)
    run(["dvc", "remote", "modify", "team-s3", "endpointurl", url], committed)
    for remote in ("team-dir", "team-s3"):
        assert "files pushed" in run(["dvc", "push", "-r", remote], committed).stdout
    assert client.list_objects_v2(Bucket="dmr-team", Prefix="dvc/files/md5/")["KeyCount"] > len(MODELS)
    run(["git", "commit", "-qam", "the team's DVC remotes"], committed)

    for remote in ("team-dir", "team-s3"):
        clone = tmp_path / f"clone-{remote}"
        run(["git", "clone", "-q", str(committed), str(clone)], tmp_path)
        assert not (clone / MODELS[0]).exists()
        run(["dvc", "pull", "-r", remote], clone)
        for model in MODELS:
            assert (clone / model).read_bytes() == (committed / model).read_bytes()
        assert UP_TO_DATE in run(["dvc", "status"], clone).stdout
        assert stages_run(run(["dvc", "repro"], clone).stdout) == []


def _wait_for_queue(project: Path, names: list[str], timeout_s: float = 300) -> str:
    """`dvc queue status` once none of ``names`` is queued or running; fails with the logs of a failed one."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        states = {line.split()[1]: line.split()[-1] for line in status.splitlines()
                  if len(line.split()) >= 4 and line.split()[1] in names}
        if set(states) == set(names) and all(state in ("Success", "Failed") for state in states.values()):
            break
        assert time.monotonic() < deadline, f"queue still busy after {timeout_s} s:\n{status}"
        time.sleep(3)
    for name, state in states.items():
        assert state == "Success", f"{name}: {state}\n{run(['dvc', 'queue', 'logs', name], project, check=False).stdout}"
    return status


def test_a_queued_sweep_runs_each_experiment_with_its_own_metrics(committed, tmp_path):
    sweep = {"sweep-lambda-1-5": 1.5, "sweep-lambda-2-5": 2.5}
    try:
        for name, value in sweep.items():
            # up to eval: what a λ sweep measures (a full sweep names no stage: it also re-runs combine and the report)
            run(["dvc", "exp", "run", "--queue", "eval", "-n", name, "-S", f"synth.lambda_max={value}"], committed)
        run(["dvc", "queue", "start", "-j", "1"], committed)
        _wait_for_queue(committed, list(sweep))
    finally:
        run(["dvc", "queue", "stop", "--kill"], committed, check=False)
    assert run(["git", "status", "--porcelain"], committed).stdout == ""  # queued runs leave the workspace alone

    shown = json.loads(run(["dvc", "exp", "show", "--json"], committed).stdout)
    revs = {rev["name"]: rev["data"] for commit in shown for exp in commit.get("experiments") or []
            for rev in exp["revs"] if rev.get("name") in sweep}
    assert set(revs) == set(sweep)
    for name, value in sweep.items():
        assert revs[name]["params"]["params.yaml"]["data"]["synth"]["lambda_max"] == value
    # each experiment trained its own head and measured it (DVC keeps only the numbers of a metrics file, no lists)
    first, second = (revs[name]["metrics"]["metrics/eval.json"]["data"] for name in sweep)
    assert 0 < first["mean"]["AUROC"] <= 100 and 0 < second["mean"]["AUROC"] <= 100
    assert first != second

    # the head's training curves of both experiments, overlaid
    diff = json.loads(run(["dvc", "plots", "diff", *sweep, "--json", "-o", str(tmp_path)], committed).stdout)["data"]
    (plot,) = diff["rejection_head_loss"]
    assert set(plot["revisions"]) == set(sweep)
    assert {row["rev"] for row in plot["content"]["data"]["values"]} == set(sweep)


def test_sharded_stages_under_two_processes_leave_dvc_nothing_to_do(committed, tmp_path):
    """Moving the inference stages to 2 processes (DMR_NPROC, not a DVC param) rewrites their outputs to the same
    bytes: forced re-runs of latents and ood_synth under torchrun leave dvc.lock as it was and `dvc status` clean."""
    project = tmp_path / "project"
    copy_project(committed, project)
    lock = (project / "dvc.lock").read_text()
    for stage in ("latents", "ood_synth"):
        result = run(["env", "DMR_NPROC=2", "DMR_DEVICE=cpu", "dvc", "repro", "-f", "-s", stage], project)
        assert f"Running stage '{stage}'" in result.stdout
        summary = "latents: " if stage == "latents" else "ood_synth: "
        assert result.stdout.count(summary) == 1, result.stdout  # rank 0 alone prints
    assert (project / "dvc.lock").read_text() == lock
    assert UP_TO_DATE in run(["dvc", "status"], project).stdout
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], project).stdout == ""
