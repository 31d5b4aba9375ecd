"""Shared fixtures: a tiny copy of the real project, run through the real DVC pipeline.

Before any test is collected, a relative ``DMR_DATA_HOME`` / ``DMR_MODEL_HOME`` / ``DMR_CACHE`` is made absolute
against the folder pytest was started from (``DMR_DATA_HOME=../shared/data python -m pytest -q`` in the
repository root means the ``shared`` folder beside it), so that it names the same folder in the project copies
the end-to-end tests run in.

The suite runs in parallel processes (pytest-xdist, ``addopts`` in pyproject.toml). The tiny project's first
`dvc repro` is the most expensive thing in it, so it runs once per session: the first process that needs it builds
it under a file lock, and each process then works in its own copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import copy_project, make_path_variables_absolute, make_tiny_project, run

make_path_variables_absolute(os.environ, Path.cwd())

# the test processes share the cores: each (and each stage it starts) takes its share of threads, not all of them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

BUILD_FAILED = "build-failed.txt"


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A tiny project after one full `dvc repro`, shared by every test process and never changed: tests that run
    commands in it take a copy (``tiny_project``)."""
    # every xdist worker has its own basetemp; their parent is the session's
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    project, failed = shared / "tiny-built", shared / BUILD_FAILED
    with FileLock(str(shared / "tiny-built.lock")):
        if failed.exists():
            pytest.fail(f"the tiny project's first dvc repro failed in another test process:\n{failed.read_text()}")
        if not project.exists():
            building = shared / "tiny-building"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            try:
                result = run(["dvc", "repro"], make_tiny_project(building))
                assert "Running stage 'eval'" in result.stdout
            except BaseException as error:
                failed.write_text(str(error)[-6000:])
                raise
            building.rename(project)  # whole or not at all: a process never sees a half-built project
    return project


@pytest.fixture(scope="session")
def tiny_project(tiny_build: Path, tmp_path_factory) -> Path:
    """This test process's copy of the tiny project, whose tests may run experiments in it; each leaves every stage
    up to date (the first run's metrics stay in ``tiny_build``)."""
    project = tmp_path_factory.mktemp("tiny") / "project"
    copy_project(tiny_build, project)
    return project
