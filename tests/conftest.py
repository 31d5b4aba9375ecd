"""Shared fixtures: a tiny copy of the real project, run through the real DVC pipeline.

Before any test is collected, a relative ``DMR_DATA_HOME`` / ``DMR_MODEL_HOME`` / ``DMR_CACHE`` is made absolute
against the folder pytest was started from (``DMR_DATA_HOME=../shared/data python -m pytest -q`` in the
repository root means the ``shared`` folder beside it), so that it names the same folder in the project copies
the end-to-end tests run in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import make_path_variables_absolute, make_tiny_project, run

make_path_variables_absolute(os.environ, Path.cwd())


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A tiny project after one full `dvc repro`."""
    project = make_tiny_project(tmp_path_factory.mktemp("tiny"))
    result = run(["dvc", "repro"], project)
    assert "Running stage 'eval'" in result.stdout
    # keep the first run's metrics: later tests run experiments in this project
    snapshot = project / ".first_run_metrics"
    shutil.copytree(project / "metrics", snapshot)
    return project
