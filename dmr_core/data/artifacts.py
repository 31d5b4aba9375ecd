"""Writing artifacts so that a stage killed midway leaves nothing a later stage could consume, and reading them so
that a damaged one is refused instead of read as if fine.

Every output is written under a temporary sibling name and moved into place with one
``os.replace`` once it is complete; leftovers of a killed run are removed on the next write.
Every zarr array carries a crc32c checksum per chunk and stores every chunk, even one equal to the fill value, so
that a missing, truncated or corrupt chunk can be told from real data; ``open_zarr`` checks that every chunk is on
disk and returns read-only wrappers whose reads turn a failed checksum into a ``DataError`` naming the artifact.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from dmr_core.distributed import all_gather, barrier, broadcast, is_main, world_size
from dmr_core.errors import DataError

# zarr's own default compressor (zstd at its default level), then a crc32c of the compressed bytes: a flipped or
# missing byte anywhere in a stored chunk fails the checksum before decompression is tried
CHECKSUMMED_COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
# zarr skips chunks equal to the fill value by default, and reads a chunk that is not there as the fill value: a
# deleted chunk would then be indistinguishable from one never written
STORE_EVERY_CHUNK = {"write_empty_chunks": True}
# what a read of a damaged artifact can raise inside zarr: a failed checksum (ValueError), a codec's error
# (RuntimeError from zstd), the file system's (OSError); selection errors are IndexError and pass through
READ_ERRORS = (ValueError, RuntimeError, OSError)


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


# A chunk is read and written whole, so its size bounds the memory of every reader that streams an array: rows of
# large images get fewer rows per chunk (a 32-px image set keeps 4,096, a 224-px one 204 … 128)
MAX_CHUNK_BYTES = 32 * 2**20


def chunk_rows(rows_per_chunk: int, row_bytes: int) -> int:
    """``rows_per_chunk`` halved until a chunk holds at most ``MAX_CHUNK_BYTES`` (or one row): halving keeps it a
    divisor of the whole chunks a rank writes (``dmr_core.distributed.chunk_shard``), so no chunk has two writers."""
    rows = rows_per_chunk
    while rows > 1 and rows * row_bytes > MAX_CHUNK_BYTES:
        rows //= 2
    return rows


def _create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: np.dtype,
                  rows_per_chunk: int) -> zarr.Array:
    """An empty array chunked along the first axis (at most ``MAX_CHUNK_BYTES`` a chunk), every chunk to be stored
    and checksummed."""
    rows = chunk_rows(rows_per_chunk, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    chunks = (max(1, min(rows, shape[0])),) + tuple(shape[1:])
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=CHECKSUMMED_COMPRESSORS,
                              config=STORE_EVERY_CHUNK)


def write_zarr_arrays(
    group: zarr.Group, arrays: dict[str, Any], rows_per_chunk: int = 4096
) -> None:
    """Store each array in ``group``, chunked along the first axis (the sample axis), every chunk stored and
    checksummed (so that ``open_zarr`` can refuse a damaged one); a dict value becomes a subgroup holding its
    arrays."""
    for name, values in arrays.items():
        if isinstance(values, dict):
            write_zarr_arrays(group.require_group(name), values, rows_per_chunk)
            continue
        values = np.ascontiguousarray(values)
        arr = _create_array(group, name, values.shape, values.dtype, rows_per_chunk)
        if values.size:
            arr[...] = values


@contextmanager
def shared_output(final: str | Path) -> Iterator[Path]:
    """``atomic_output`` shared by every rank of a process group: rank 0 makes the temporary path and every rank
    writes into it; once all ranks are through the block, rank 0 moves it into place, so the artifact appears
    once, complete. With one process, ``atomic_output`` itself."""
    if world_size() == 1:
        with atomic_output(final) as tmp:
            yield tmp
        return
    if is_main():
        with atomic_output(final) as tmp:
            broadcast(str(tmp))
            yield tmp
            barrier()  # every rank has written its rows
        barrier()  # the artifact is in place before any rank goes on
    else:
        tmp = Path(broadcast(None))
        yield tmp
        barrier()
        barrier()


class _ChunkBuffer:
    """Rows of one stored array, held until they complete a chunk, then written: each chunk is written once,
    whole (or up to the array's end), so its bytes are those one write of the whole array gives."""

    def __init__(self, array: zarr.Array, start: int) -> None:
        self.array, self.start, self.parts, self.held = array, start, [], 0

    def add(self, values: np.ndarray, until: int) -> None:
        self.parts.append(values)
        self.held += len(values)
        step = self.array.chunks[0]
        while self.held:
            boundary = min(until, (self.start // step + 1) * step)
            if self.start + self.held < boundary:
                return
            held = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
            count = boundary - self.start
            self.array[self.start:boundary] = np.ascontiguousarray(held[:count])
            self.parts = [held[count:]] if count < len(held) else []
            self.start, self.held = boundary, self.held - count


def stream_zarr_rows(root: Path, key: str, blocks: Iterable[tuple[int, dict[str, np.ndarray]]], rows: range,
                     n: int, rows_per_chunk: int = 4096) -> None:
    """Write this rank's ``rows`` (of ``n``) of arrays computed a block at a time into the group ``key`` of the zarr
    group at ``root``: ``blocks`` are ``(start, {name: rows from start})`` in row order, covering ``rows``; rows
    outside them (of a batch widened by ``dmr_core.distributed.batch_aligned``) are dropped. Rank 0 creates the
    arrays, then each rank writes its rows, whole chunks (``dmr_core.distributed.chunk_shard``) so that no chunk has
    two writers. Rows are held only until they complete a chunk, so the writer holds at most a chunk per array, and
    the stored bytes are those ``write_zarr_arrays`` writes of the whole arrays. Every rank of a process group calls
    it, once per ``key``."""
    def group_of(mode: str) -> zarr.Group:
        group = zarr.open_group(str(root), mode=mode)
        return group.require_group(key) if key else group

    def own_rows(blocks: Iterable[tuple[int, dict[str, np.ndarray]]]) -> Iterator[dict[str, np.ndarray]]:
        at = rows.start
        for start, arrays in blocks:
            stop = start + len(next(iter(arrays.values())))
            if stop <= at or start >= rows.stop:
                continue
            if start > at:
                raise ValueError(f"the blocks skip rows {at}..{start - 1} of {key or 'the group'}")
            yield {name: values[at - start:min(stop, rows.stop) - start] for name, values in arrays.items()}
            at = min(stop, rows.stop)
        if at < rows.stop:
            raise ValueError(f"the blocks end at row {at} of {key or 'the group'}, before row {rows.stop}")

    blocks = iter(blocks)
    given = next(blocks, None)  # the arrays' layout, even when they have no rows
    layout = {} if given is None else {name: (v.shape[1:], v.dtype.str) for name, v in given[1].items()}
    stream = own_rows(itertools.chain([given], blocks)) if given is not None and len(rows) else iter(())
    first = next(stream, None)
    if world_size() > 1:  # a rank with no rows does not know the layout: a rank with rows does
        layouts = all_gather((len(rows), layout))
        layout = max(layouts, key=lambda reported: (reported[0] > 0, len(reported[1])))[1]
    if is_main():
        group = group_of("a")
        for name, (shape, dtype) in layout.items():
            _create_array(group, name, (n, *shape), np.dtype(dtype), rows_per_chunk)
    barrier()  # the arrays exist before any rank writes
    if first is not None:
        group = group_of("r+")
        # the store-every-chunk setting is the array object's, not its metadata's: a reopened array needs it again,
        # or a chunk equal to the fill value (a class's run of label 0) would not be written
        buffers = {name: _ChunkBuffer(group[name].with_config(STORE_EVERY_CHUNK), rows.start) for name in layout}
        for arrays in itertools.chain([first], stream):
            for name, values in arrays.items():
                buffers[name].add(values, rows.stop)
    barrier()


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


def write_zarr_rows(root: Path, key: str, arrays: dict[str, np.ndarray], rows: range, n: int,
                    rows_per_chunk: int = 4096) -> None:
    """Write this rank's ``rows`` (of ``n``) of every array into the group ``key`` of the zarr group at ``root``,
    as ``write_zarr_arrays`` writes whole arrays (``stream_zarr_rows`` of one block). With one process, ``rows``
    are all ``n``."""
    stream_zarr_rows(root, key, [(rows.start, arrays)], rows, n, rows_per_chunk)


def save_zarr_rows(
    path: str | Path, arrays: dict[str, np.ndarray], rows: range, n: int, attrs: dict[str, Any] | None = None,
    rows_per_chunk: int = 4096,
) -> None:
    """``save_zarr`` by every rank of a process group at once: each passes its own ``rows`` (of ``n``, whole
    chunks: ``dmr_core.distributed.chunk_shard``) of the same arrays, and the group appears once, complete. With
    one process, ``rows`` are all ``n`` and the bytes are those ``save_zarr`` writes."""
    save_zarr_stream(path, [(rows.start, arrays)], rows, n, attrs, rows_per_chunk)


def save_zarr_stream(
    path: str | Path, blocks: Iterable[tuple[int, dict[str, np.ndarray]]], rows: range, n: int,
    attrs: dict[str, Any] | None = None, rows_per_chunk: int = 4096,
) -> None:
    """``save_zarr`` of arrays computed a block at a time, by every rank of a process group at once
    (``stream_zarr_rows``): the group appears once, complete, and holds the bytes ``save_zarr`` of the whole arrays
    writes."""
    with shared_output(path) as tmp:
        if is_main():
            zarr.open_group(str(tmp), mode="w")
        stream_zarr_rows(tmp, "", blocks, rows, n, rows_per_chunk)
        if attrs and is_main():
            zarr.open_group(str(tmp), mode="r+").attrs.update(attrs)


def _damaged(path: Path, what: str, problem: str, fix: str | None = None) -> DataError:
    """The one-line error of a damaged artifact: which artifact, what is wrong inside it, and the fix (by default:
    restore it from DVC's cache, ``--force`` as DVC will not overwrite a modified file without it, or rebuild it)."""
    problem = " ".join(problem.split())  # a codec's message may span lines; the error is one line
    fix = fix or f"run `dvc checkout --force {path}` to restore {what}, or `dvc repro` to rebuild it"
    return DataError(f"{path} is damaged: {problem}; {fix}")


def _stored_files(root: Path) -> set[str]:
    """Every file under ``root``, as store keys (relative, ``/``-separated): one directory walk, no reads."""
    return {Path(folder, name).relative_to(root).as_posix()
            for folder, _, names in os.walk(root) for name in names}


def _check_array(array: zarr.Array, stored: set[str], path: Path, what: str) -> None:
    """Refuse an array without a checksum (written before checksums, e.g. restored from an old cache) or with a
    chunk file missing (zarr would read it as the fill value). The expected chunk files come from the metadata's
    chunk grid; ``write_zarr_arrays`` never shards, so each chunk is one file."""
    name = array.path.strip("/")
    if not any(isinstance(codec, Crc32cCodec) for codec in array.compressors):
        raise _damaged(path, what, f"array {name} was written without a checksum (by an older version of the "
                                   f"pipeline, e.g. restored from an old cache)",
                       f"run `dvc repro` to rebuild {what} with checksums")
    keys = (array.metadata.encode_chunk_key(coords)
            for coords in itertools.product(*(range(n) for n in array.cdata_shape)))
    missing = [key for key in keys if f"{name}/{key}" not in stored]
    if missing:
        raise _damaged(path, what, f"array {name} is missing {len(missing)} of {array.nchunks} chunks "
                                   f"(first: {name}/{missing[0]})")


class ArtifactArray:
    """A read-only zarr array of an artifact: indexing reads it as zarr does, but a chunk that fails its checksum
    or cannot be decoded raises a one-line ``DataError`` naming the artifact, the array and the fix."""

    def __init__(self, array: zarr.Array, path: Path, what: str) -> None:
        self._array, self._path, self._what = array, path, what

    @property
    def name(self) -> str:
        """The array's path inside the artifact, e.g. ``ood/icons/feature_map``."""
        return self._array.path.strip("/")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def size(self) -> int:
        return self._array.size

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._array.chunks

    @property
    def attrs(self) -> MappingProxyType:
        return MappingProxyType(self._array.attrs.asdict())

    def __len__(self) -> int:
        """Rows along the first axis, as NumPy's ``len`` (zarr 3's ``Array`` has none)."""
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._array[key]
        except READ_ERRORS as err:
            problem = ("a chunk fails its crc32c checksum (corrupt or truncated)" if "checksum" in str(err)
                       else f"a chunk cannot be decoded ({type(err).__name__}: {err})")
            raise _damaged(self._path, self._what, f"array {self.name}: {problem}") from err

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __repr__(self) -> str:
        return f"<ArtifactArray {self._path}/{self.name} shape={self.shape} dtype={self.dtype}>"


class ArtifactGroup:
    """A read-only zarr group of an artifact, indexed like one (``group["ood/icons"]["logits"]``, ``in``,
    ``array_keys()``, ``attrs``); its members are wrapped too, so every read goes through ``ArtifactArray``."""

    def __init__(self, group: zarr.Group, path: Path, what: str) -> None:
        self._group, self._path, self._what = group, path, what

    def _wrap(self, node: zarr.Array | zarr.Group) -> ArtifactArray | ArtifactGroup:
        cls = ArtifactGroup if isinstance(node, zarr.Group) else ArtifactArray
        return cls(node, self._path, self._what)

    def __getitem__(self, key: str) -> ArtifactArray | ArtifactGroup:
        try:
            node = self._group[key]
        except KeyError:
            inside = f" in {self.name}" if self.name else ""
            raise _damaged(self._path, self._what, f"it has no array or group {key!r}{inside}") from None
        return self._wrap(node)

    def __contains__(self, key: str) -> bool:
        return key in self._group

    def __iter__(self) -> Iterator[str]:
        return iter(self._group.keys())

    def __len__(self) -> int:
        return len(self._group)

    def keys(self) -> Iterator[str]:
        return self._group.keys()

    def array_keys(self) -> Iterator[str]:
        return self._group.array_keys()

    def group_keys(self) -> Iterator[str]:
        return self._group.group_keys()

    @property
    def name(self) -> str:
        """The group's path inside the artifact (``""`` for the artifact itself)."""
        return self._group.path.strip("/")

    @property
    def attrs(self) -> MappingProxyType:
        return MappingProxyType(self._group.attrs.asdict())

    def __repr__(self) -> str:
        return f"<ArtifactGroup {self._path}/{self.name}>"


def open_zarr(path: str | Path, what: str) -> ArtifactGroup:
    """Open an existing zarr group read-only, or fail saying which stage produces it.

    Refuses, with a one-line ``DataError``, an artifact with an array written without a checksum or with a chunk
    file missing (a directory listing and the metadata: no chunk is read); reads of the returned group then
    refuse a chunk that fails its checksum. ``what`` names the artifact for the user, e.g. "the latents (stage
    latents)"."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path} is missing or incomplete: run `dvc repro` to build {what}")
    try:
        group = zarr.open_group(str(path), mode="r")
        stored = _stored_files(path)
        for _, node in group.members(max_depth=None):
            if isinstance(node, zarr.Array):
                _check_array(node, stored, path, what)
    except DataError:
        raise
    except READ_ERRORS as err:  # unreadable metadata (zarr.json)
        raise _damaged(path, what, f"its metadata cannot be read ({type(err).__name__}: {err})") from err
    return ArtifactGroup(group, path, what)
