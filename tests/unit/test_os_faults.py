"""OS faults a user causes (a full or read-only disk, a file where a folder belongs) end a stage in one line.

Tests run as root, which permissions do not stop, so the faults are caused another way: a regular file where the
output's folder should be (a real NotADirectoryError / FileExistsError), /dev/full (a real ENOSPC), or a ``main``
that raises the error a full or read-only disk would.
"""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmr_core.data.artifacts import atomic_output, write_json
from dmr_core.runtime.os_faults import os_fault_message
from dmr_core.runtime.stage import run
from helpers import ROOT, project_pythonpath


def run_stage_in_process(main, tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``dmr_core.runtime.stage.run(main, "fake")`` called with ``args``, in ``tmp_path``."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fake", *args])
    with pytest.raises(SystemExit) as exit_info:
        run(main, "fake")
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def fails_midway_with(error: OSError):
    """A stage ``main`` that writes part of its output, then fails with ``error`` (as a full disk would)."""
    def main(params, out: Path) -> None:
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise error
    return main


def test_full_disk_is_one_line_and_the_old_output_stays(tmp_path, monkeypatch, capsys):
    old = tmp_path / "metrics" / "fake.json"
    write_json(old, {"run": 1})
    error = OSError(errno.ENOSPC, "No space left on device", "metrics/.fake.json.tmp-4242")
    code, lines = run_stage_in_process(fails_midway_with(error), tmp_path, monkeypatch, capsys,
                                       "--out", "metrics/fake.json")
    assert code == 1
    assert lines == [("error in stage fake: cannot write metrics/fake.json: No space left on device; free space on "
                      "its disk (the DVC cache, .dvc/cache, may hold old outputs) and run again")]
    assert old.read_text() == '{\n  "run": 1\n}\n'
    assert sorted(p.name for p in old.parent.iterdir()) == ["fake.json"]  # no half-written copy left


def test_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    error = OSError(errno.EROFS, "Read-only file system", "metrics/.fake.json.tmp-4242")
    code, lines = run_stage_in_process(fails_midway_with(error), tmp_path, monkeypatch, capsys,
                                       "--out", "metrics/fake.json")
    assert code == 1
    assert lines == [("error in stage fake: cannot write metrics/fake.json: Read-only file system; the file system "
                      "is read-only: run from a writable copy of the project")]
    assert not (tmp_path / "metrics" / "fake.json").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_real_full_device_without_a_file_name(tmp_path, monkeypatch, capsys):
    """A failed write() on an open file names no path; the line still says what happened."""
    def main(params, out: Path) -> None:
        with open("/dev/full", "w") as full:
            full.write("x")

    code, lines = run_stage_in_process(main, tmp_path, monkeypatch, capsys, "--out", "unused")
    assert code == 1
    assert lines == [("error in stage fake: cannot write the stage's outputs: No space left on device; free space "
                      "on its disk (the DVC cache, .dvc/cache, may hold old outputs) and run again")]


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error", "x"), OSError("no errno")])
def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch, error):
    """A failing disk or a bug is not the user's to fix from one line: the traceback stays."""
    def main(params, out: Path) -> None:
        raise error

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fake", "--out", "x"])
    with pytest.raises(OSError) as raised:
        run(main, "fake")
    assert raised.value is error


@pytest.mark.parametrize("code,filename,exists,expected", [
    (errno.EACCES, "params.yaml", True, "cannot read params.yaml: Permission denied; give your user access"),
    (errno.EACCES, "data/models/.c.pt.tmp-7", False, "cannot write data/models/c.pt: Permission denied;"),
    (errno.EACCES, "data/new_folder", False, "cannot write data/new_folder: Permission denied;"),
    (errno.EDQUOT, "data/.f.zarr.tmp-7/x/c/0", False, "cannot write data/f.zarr: Disk quota exceeded; free space"),
    (errno.EISDIR, "data/models/c.pt", True, "cannot read data/models/c.pt: Is a directory; a folder stands"),
])
def test_read_or_write_and_the_path_the_user_knows(tmp_path, monkeypatch, code, filename, exists, expected):
    monkeypatch.chdir(tmp_path)
    if exists:
        (tmp_path / filename).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / filename).touch()
    assert os_fault_message(OSError(code, os.strerror(code), filename)).startswith(expected)


def test_file_exists_is_a_fault_only_with_a_file_in_a_folders_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").touch()
    assert os_fault_message(FileExistsError(errno.EEXIST, "File exists", "folder")) is None  # made twice: a bug
    assert os_fault_message(FileExistsError(errno.EEXIST, "File exists", "file")).startswith(
        "cannot write file: File exists; a file stands where a folder is expected")


@pytest.mark.parametrize("out,expected", [
    ("blocker/datasets", "cannot write blocker: File exists; a file stands where a folder is expected"),
    ("blocker/sub/datasets", "cannot write blocker/sub: Not a directory; a file stands where a folder is expected"),
])
def test_stage_with_a_file_where_its_output_folder_belongs(tmp_path, out, expected):
    """The real data stage, in a subprocess: its output's folder is a regular file. One line, exit 1, and the file
    in the way is untouched."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "blocker").write_text("not a folder")
    command = [sys.executable, "-m", "stages.data", "--out", out, "--metrics", "metrics/data.json"]
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": project_pythonpath(),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error in stage data: {expected}"), result.stderr
    assert (tmp_path / "blocker").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "params.yaml"]
