"""A relative DMR_DATA_HOME / DMR_MODEL_HOME / DMR_CACHE means the same folder wherever a stage or test runs.

The rule: a stage takes a relative value from the folder it runs in, which DVC makes the project root; the tests
make the values absolute against the folder pytest was started from before anything is copied or run. Where a
relative value names no folder (in `dvc exp run --temp` or a queued experiment, which run in a copy elsewhere),
the stage stops with one line naming the folder it looked in and saying to give an absolute path.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PATH_VARIABLES, ROOT, image_bytes, make_path_variables_absolute, project_pythonpath, write_tar

from dmr_core.data.datasets import DataError, data_home, download_dir, env_folder, load_ood_set
from dmr_core.errors import CheckpointError
from dmr_core.nets.classifier import pretrained_path


@pytest.fixture
def beside(tmp_path: Path, monkeypatch) -> Path:
    """``tmp/project`` as the working directory, with ``tmp/shared/data/scenes_crop.tar`` beside it."""
    (tmp_path / "project").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    write_tar(tmp_path / "shared" / "data" / "scenes_crop.tar", {f"scenes_crop/test/{i}.png": image_bytes() for i in range(3)})
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.setenv("DMR_DATA_HOME", "../shared/data")
    return tmp_path


def test_relative_values_are_taken_from_the_project_root(beside, monkeypatch):
    assert env_folder("DMR_DATA_HOME") == data_home() == beside / "shared" / "data"
    monkeypatch.setenv("DMR_CACHE", "cache")
    assert download_dir() == beside / "project" / "cache" / "downloads"
    assert len(load_ood_set("scenes_crop").images) == 3
    monkeypatch.delenv("DMR_DATA_HOME")
    assert env_folder("DMR_DATA_HOME") is None and data_home() is None


def test_relative_value_read_elsewhere_names_the_folder_and_the_fix(beside, monkeypatch):
    """As in `dvc exp run --temp`: the same relative value, read from a copy of the project somewhere else."""
    (beside / "elsewhere" / "copy").mkdir(parents=True)
    monkeypatch.chdir(beside / "elsewhere" / "copy")
    missing = beside / "elsewhere" / "shared" / "data"
    with pytest.raises(DataError) as raised:
        load_ood_set("scenes_crop")
    message = str(raised.value)
    assert message.startswith(f"DMR_DATA_HOME (now ../shared/data, i.e. {missing}) is not a folder")
    assert "give an absolute path" in message and "\n" not in message


def test_missing_archive_names_the_resolved_folder(beside, monkeypatch):
    with pytest.raises(DataError, match=r"put icons\.tar in the folder named by DMR_DATA_HOME \(now ../shared/data, "
                                        rf"i\.e\. {beside / 'shared' / 'data'}\); .*give an absolute path"):
        load_ood_set("icons")
    monkeypatch.setenv("DMR_DATA_HOME", str(beside / "shared" / "data"))  # absolute: no hint about relative paths
    with pytest.raises(DataError) as raised:
        load_ood_set("icons")
    assert "i.e." not in str(raised.value) and "absolute path" not in str(raised.value)


def test_relative_model_home_is_taken_from_the_project_root(beside, monkeypatch):
    (beside / "models").mkdir()
    (beside / "models" / "resnet20-12fca82f.th").write_bytes(b"not the weights")
    monkeypatch.setenv("DMR_MODEL_HOME", "../models")
    with pytest.raises(CheckpointError, match=f"^{beside / 'models' / 'resnet20-12fca82f.th'} has sha256"):
        pretrained_path("resnet20")


def test_tests_make_relative_values_absolute_against_the_start_folder(tmp_path):
    environ = {"DMR_DATA_HOME": "../shared/data", "DMR_MODEL_HOME": "/abs/models", "DMR_CACHE": "~/cache"}
    make_path_variables_absolute(environ, tmp_path / "repo")
    assert environ == {"DMR_DATA_HOME": str(tmp_path / "shared" / "data"), "DMR_MODEL_HOME": "/abs/models",
                       "DMR_CACHE": "~/cache"}
    empty: dict[str, str] = {}
    make_path_variables_absolute(empty, tmp_path)
    assert empty == {}


def test_this_session_holds_absolute_values():
    """conftest.py has applied the rule before any test ran (the README's command passes a relative path)."""
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        assert not value or os.path.isabs(os.path.expanduser(value)), f"{name}={value}"


def test_stage_run_in_a_copy_elsewhere_fails_in_one_line(tmp_path):
    """The data stage where ``../shared/data`` is not there: one line naming the folder, exit 1, nothing written."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    command = [sys.executable, "-m", "stages.data", "--out", "data/datasets", "--metrics", "metrics/data.json"]
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, env={
        "PYTHONPATH": project_pythonpath(),
        "PATH": "/usr/bin:/bin", "DMR_DATA_HOME": "../shared/data"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [(
        f"error in stage data: DMR_DATA_HOME (now ../shared/data, i.e. {tmp_path.parent / 'shared' / 'data'}) is not "
        "a folder: point it at the folder holding the dataset archives (a relative path is taken from the project "
        "folder the stage runs in; `dvc exp run --temp` and queued experiments run in a copy elsewhere, so give an "
        "absolute path there)")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # refused before any output was begun
