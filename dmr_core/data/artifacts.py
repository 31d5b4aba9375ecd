"""Writing artifacts so that a stage killed midway leaves nothing a later stage could consume.

Every output is written under a temporary sibling name and moved into place with one
``os.replace`` once it is complete; leftovers of a killed run are removed on the next write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _wait_for_pending_zarr_io(timeout_s: float = 60.0) -> None:
    """Wait until zarr's I/O event loop has no task left.

    zarr runs chunk encoding and writes as tasks on its own event-loop thread; an interrupt (Ctrl-C) stops the
    main thread's wait for them, not the tasks, which go on writing into the temporary folder and would recreate
    it after it was removed. Waiting for them, instead of cancelling, keeps a write from being cut halfway.
    """
    # zarr keeps its loop in a private module global; should a later zarr move it, fall back to the removal loop
    try:
        from zarr.core import sync as zarr_sync
    except ImportError:
        return
    loop = (getattr(zarr_sync, "loop", None) or [None])[0]
    if not isinstance(loop, asyncio.AbstractEventLoop) or loop.is_closed() or not loop.is_running():
        return

    async def pending_tasks_done() -> int:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    deadline = time.monotonic() + timeout_s
    # a finishing task can start others (a gather of chunk writes), so wait until a round finds none
    while time.monotonic() < deadline:
        waited = asyncio.run_coroutine_threadsafe(pending_tasks_done(), loop)
        try:
            if waited.result(timeout=max(0.0, deadline - time.monotonic())) == 0:
                return
        except concurrent.futures.TimeoutError:
            waited.cancel()
            return


def _remove_settled(path: Path, settle_s: float = 0.2, timeout_s: float = 10.0) -> None:
    """Remove ``path`` until it stays gone: a writer thread outside zarr's loop may still finish a file."""
    deadline = time.monotonic() + timeout_s
    while path.exists() or path.is_symlink():
        _remove(path)
        time.sleep(settle_s)
        if time.monotonic() > deadline:
            break


@contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; move it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        _remove(stale)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            _remove(final)
        os.replace(tmp, final)
    finally:
        _wait_for_pending_zarr_io()
        _remove_settled(tmp)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_zarr_arrays(
    group: zarr.Group, arrays: dict[str, Any], rows_per_chunk: int = 4096
) -> None:
    """Store each array in ``group``, chunked along the first axis (the sample axis); a dict value becomes a
    subgroup holding its arrays."""
    for name, values in arrays.items():
        if isinstance(values, dict):
            write_zarr_arrays(group.require_group(name), values, rows_per_chunk)
            continue
        values = np.ascontiguousarray(values)
        chunks = (max(1, min(rows_per_chunk, values.shape[0])),) + values.shape[1:]
        arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks)
        if values.size:
            arr[...] = values


def save_zarr(
    path: str | Path, arrays: dict[str, Any], attrs: dict[str, Any] | None = None,
    rows_per_chunk: int = 4096,
) -> None:
    """Write a zarr group holding ``arrays`` and ``attrs`` atomically."""
    with atomic_output(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        write_zarr_arrays(group, arrays, rows_per_chunk)
        if attrs:
            group.attrs.update(attrs)


def open_zarr(path: str | Path, what: str) -> zarr.Group:
    """Open an existing zarr group read-only, or fail saying which stage produces it."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path} is missing or incomplete: run `dvc repro` to build {what}")
    return zarr.open_group(str(path), mode="r")
