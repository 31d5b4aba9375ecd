"""Every stage is deterministic given its seed; an up-to-date pipeline does no work.

That an independent second run gives byte-identical metrics, and that another seed changes the synthesised set, is
tested by tests/e2e/test_interrupted.py on the run it recovers (one full pipeline run serves both)."""

import pytest
from helpers import needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]


def test_second_repro_does_nothing(tiny_project):
    assert stages_run(run(["dvc", "repro"], tiny_project).stdout) == []
