"""A stage killed midway leaves nothing a later stage could consume, and `dvc repro` then recovers."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GIT_IDENTITY, make_tiny_project, needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]


def start_repro(project: Path) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, **GIT_IDENTITY})


def wait_for(condition, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for the stage to start writing")
        time.sleep(0.05)


def test_kill_and_interrupt_midway_then_repro_gives_same_metrics(tiny_project, tmp_path):
    project = make_tiny_project(tmp_path)
    data_dir = project / "data"

    # SIGKILL the whole process tree while the data stage is writing its (temporary) output.
    proc = start_repro(project)
    wait_for(lambda: any(data_dir.glob(".datasets.tmp-*")))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (data_dir / "datasets").exists(), "a killed stage must not leave its output in place"

    # Ctrl-C (SIGINT to the process group) while the classifier is training.
    proc = start_repro(project)
    wait_for(lambda: (data_dir / "datasets" / "cifar10_test.zarr").exists()
             and not any(data_dir.glob(".datasets.tmp-*")))
    wait_for(lambda: any(proc_children_running_stage(project, "classifier")), timeout=120)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert not (data_dir / "models" / "classifier.pt").exists()
    assert not list((data_dir / "models").glob(".classifier.pt.tmp-*")) if (data_dir / "models").exists() else True

    result = run(["dvc", "repro"], project)
    assert "eval" in stages_run(result.stdout)
    first = tiny_project / ".first_run_metrics"
    for path in sorted(first.glob("*.json")):
        assert (project / "metrics" / path.name).read_text() == path.read_text(), path.name


def proc_children_running_stage(project: Path, stage: str):
    """True once a `python -m stages.<stage>` process runs (its command line is in /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == str(project) and f"stages.{stage}".encode() in cmdline:
            yield True
