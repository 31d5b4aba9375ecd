"""Shared fixtures: a tiny copy of the real project, run through the real DVC pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import make_tiny_project, run


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
