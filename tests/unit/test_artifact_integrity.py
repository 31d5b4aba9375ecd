"""A damaged artifact is refused with one line naming it and the fix, never read as if fine."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dmr_core.data.artifacts import open_zarr, save_zarr
from dmr_core.errors import DataError
from dmr_core.nets.rejection_head import RejectionHead, save_head
from helpers import ROOT, project_pythonpath

ROWS = 10          # per set; chunks of 4 rows: 3 chunks per array
FEATURE = "ood/icons/feature_map"
CHUNK = f"{FEATURE}/c/1/0/0/0"


def features_like(rows: int = ROWS, seed: int = 0) -> dict:
    """The layout of the features stage's output, small: ``id_test`` and ``ood/<name>``, three representations."""
    rng = np.random.default_rng(seed)

    def one_set() -> dict:
        return {"feature_map": rng.random((rows, 4, 2, 2)).astype(np.float16),
                "penultimate": rng.random((rows, 8)).astype(np.float16),
                "logits": rng.normal(size=(rows, 10)).astype(np.float16)}
    return {"id_test": one_set(), "ood": {"icons": one_set(), "noise": one_set()}}


@pytest.fixture
def artifact(tmp_path) -> Path:
    path = tmp_path / "features.zarr"
    save_zarr(path, features_like(), attrs={"ood_sets": ["icons", "noise"]}, rows_per_chunk=4)
    return path


def flip_one_byte(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))


def assert_one_line_naming(err: DataError, path: Path, array: str, fix: str = "restore") -> None:
    """One line naming the artifact and the array, and the fix: restore it from DVC's cache or rebuild it."""
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{path} is damaged: ") and array in message
    assert "`dvc repro`" in message
    assert (f"`dvc checkout --force {path}`" in message) == (fix == "restore")


def test_healthy_arrays_read_back_identically(artifact):
    expected = features_like()
    group = open_zarr(artifact, "the features")
    assert list(group.attrs["ood_sets"]) == ["icons", "noise"] and "ood/icons" in group and "ood/x" not in group
    assert sorted(group["ood"].group_keys()) == ["icons", "noise"]
    for name in ("feature_map", "penultimate", "logits"):
        stored = group["ood"]["icons"][name]
        assert stored.shape == expected["ood"]["icons"][name].shape and len(stored) == ROWS
        for read in (stored[:], stored[...], np.asarray(stored), stored[2:7]):
            assert read.dtype == np.float16
        np.testing.assert_array_equal(stored[:], expected["ood"]["icons"][name])
        np.testing.assert_array_equal(np.asarray(group["ood/icons"][name][3:9]), expected["ood"]["icons"][name][3:9])


def test_every_chunk_of_an_all_zero_array_is_stored(tmp_path):
    save_zarr(tmp_path / "z.zarr", {"zeros": np.zeros((10, 3), np.float32)}, rows_per_chunk=4)
    assert sorted(p.name for p in (tmp_path / "z.zarr" / "zeros" / "c").iterdir()) == ["0", "1", "2"]
    np.testing.assert_array_equal(open_zarr(tmp_path / "z.zarr", "z")["zeros"][:], np.zeros((10, 3)))


def test_deleted_chunk_is_refused_at_open(artifact):
    (artifact / CHUNK).unlink()
    with pytest.raises(DataError, match="missing 1 of 3 chunks") as err:
        open_zarr(artifact, "the features")
    assert_one_line_naming(err.value, artifact, FEATURE)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "one flipped byte"])
def test_corrupt_chunk_is_refused_on_read(artifact, damage):
    chunk = artifact / CHUNK
    if damage == "one flipped byte":
        flip_one_byte(chunk)
    else:
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2 if damage == "truncated" else 0])
    group = open_zarr(artifact, "the features")
    np.testing.assert_array_equal(group[FEATURE][:4], features_like()["ood"]["icons"]["feature_map"][:4])
    with pytest.raises(DataError, match="crc32c checksum") as err:
        group[FEATURE][:]
    assert_one_line_naming(err.value, artifact, FEATURE)


def test_array_written_without_checksum_is_refused(tmp_path):
    path = tmp_path / "old.zarr"
    zarr.open_group(str(path), mode="w").create_array("latents", shape=(4, 2), dtype="float32")[...] = 1.0
    with pytest.raises(DataError, match="without a checksum") as err:
        open_zarr(path, "the latents")
    assert_one_line_naming(err.value, path, "latents", fix="rebuild")


def test_missing_member_is_one_line_and_selection_errors_pass_through(artifact):
    group = open_zarr(artifact, "the features")
    with pytest.raises(DataError, match="no array or group 'places'") as err:
        group["ood"]["places"]
    assert_one_line_naming(err.value, artifact, "places")
    with pytest.raises(IndexError):  # a caller's bad index is not reported as damage
        group[FEATURE][ROWS + 5]


@pytest.mark.parametrize("damage", ["deleted chunk", "flipped byte"])
def test_eval_stage_refuses_a_damaged_features_artifact(tmp_path, damage):
    """Run directly, as a user would, the eval stage stops with one line and writes nothing."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    save_zarr(tmp_path / "features.zarr", features_like(rows=40), attrs={"ood_sets": ["icons", "noise"]},
              rows_per_chunk=16)
    torch.manual_seed(0)
    save_head(RejectionHead(in_features=8, hidden=16), "penultimate", tmp_path / "head.pt")
    chunk = tmp_path / "features.zarr" / "ood" / "icons" / "penultimate" / "c" / "1" / "0"
    chunk.unlink() if damage == "deleted chunk" else flip_one_byte(chunk)
    before = sorted(p.name for p in tmp_path.iterdir())

    command = [sys.executable, "-m", "stages.eval", "--head", "head.pt", "--features", "features.zarr",
               "--scores", "data/dmr_scores.zarr", "--metrics", "metrics/eval.json", "--plots", "plots/eval"]
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": project_pythonpath(),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error in stage eval: features.zarr "), result.stderr
    assert "ood/icons/penultimate" in lines[0] and "dvc checkout --force features.zarr" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no scores, metrics or plots
