"""Outputs appear whole or not at all."""

import threading
import time

import numpy as np
import pytest
import zarr

from dmr_core.data.artifacts import MAX_CHUNK_BYTES, atomic_output, chunk_rows, open_zarr, save_zarr


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "part").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_a_late_write_from_another_thread(tmp_path):
    """As zarr's I/O thread can: a chunk write still in flight lands after the interrupt's cleanup began."""
    target = tmp_path / "out.zarr"
    writers = []

    def late_chunk_write(folder):
        time.sleep(0.1)
        (folder / "c" / "0").mkdir(parents=True, exist_ok=True)
        (folder / "c" / "0" / "0").write_bytes(b"chunk")

    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            writers.append(threading.Thread(target=late_chunk_write, args=(tmp,)))
            writers[0].start()
            raise KeyboardInterrupt
    writers[0].join()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_artifact_whole_and_success_replaces(tmp_path):
    save_zarr(tmp_path / "a.zarr", {"x": np.arange(5)})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(tmp_path / "a.zarr") as tmp:
            zarr.open_group(str(tmp), mode="w").create_array("x", shape=(3,), dtype="int64")[...] = np.arange(3)
            raise RuntimeError("disk full")
    np.testing.assert_array_equal(open_zarr(tmp_path / "a.zarr", "a")["x"][:], np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # the half-written rewrite is gone
    save_zarr(tmp_path / "a.zarr", {"x": np.arange(3)})
    np.testing.assert_array_equal(open_zarr(tmp_path / "a.zarr", "a")["x"][:], np.arange(3))


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    leftover = tmp_path / ".a.zarr.tmp-12345"
    leftover.mkdir()
    save_zarr(tmp_path / "a.zarr", {"x": np.zeros(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_open_incomplete_zarr_names_the_fix(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        open_zarr(tmp_path / "a.zarr", "the latents")


def test_interrupt_waits_for_zarr_io_still_in_flight(tmp_path):
    """Ctrl-C stops the main thread's wait for zarr, not zarr's I/O tasks: cleanup must outlast a slow chunk."""
    import asyncio

    from zarr.core.sync import _get_loop

    target = tmp_path / "out.zarr"

    async def slow_chunk_write(folder):
        await asyncio.sleep(0.8)  # longer than the settle interval of the removal loop
        await asyncio.to_thread(lambda: (folder / "c" / "0").mkdir(parents=True, exist_ok=True))

    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            save_zarr(tmp_path / "other.zarr", {"x": np.arange(3)})  # zarr's loop is running
            tmp.mkdir()
            in_flight = asyncio.run_coroutine_threadsafe(slow_chunk_write(tmp), _get_loop())
            raise KeyboardInterrupt
    assert in_flight.done(), "cleanup returned before zarr's pending write finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.zarr"]


def test_nested_arrays_become_groups(tmp_path):
    save_zarr(tmp_path / "s.zarr", {"id_test": np.arange(4), "ood": {"icons": np.ones(3), "noise": np.zeros(2)}})
    group = open_zarr(tmp_path / "s.zarr", "s")
    np.testing.assert_array_equal(group["ood"]["icons"][:], np.ones(3))
    assert sorted(group["ood"].array_keys()) == ["icons", "noise"]


@pytest.mark.parametrize(("size", "rows"), [(32, 4096), (64, 2048), (128, 512), (224, 128)])
def test_image_chunks_hold_fewer_rows_as_images_grow(size, rows):
    """A 32-px set keeps 4,096 images a chunk; larger images get fewer (halving), so no chunk passes 32 MiB and a
    reader streaming a 224-px set holds one chunk of 19 MB, not 616 MB."""
    row_bytes = size * size * 3
    assert chunk_rows(4096, row_bytes) == rows
    assert rows * row_bytes <= MAX_CHUNK_BYTES and (rows == 4096 or 2 * rows * row_bytes > MAX_CHUNK_BYTES)


def test_stored_arrays_are_chunked_by_that_rule(tmp_path):
    save_zarr(tmp_path / "set.zarr", {"images": np.zeros((600, 224, 224, 3), np.uint8), "labels": np.zeros(600)})
    group = zarr.open_group(str(tmp_path / "set.zarr"), mode="r")
    assert group["images"].chunks == (128, 224, 224, 3) and group["labels"].chunks == (600,)
