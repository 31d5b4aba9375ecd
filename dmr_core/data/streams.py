"""Reading a stored set a batch at a time, so that no reader holds a whole set of images.

A set is an array-like with rows along its first axis: a NumPy array, or an artifact's zarr array
(``ArtifactArray``), which is read a chunk at a time (each chunk decompressed once, at most one chunk and one batch
in memory). The batches are the rows one whole read would give, in the same order and grouping, so a computation
over them comes out to the bits it gives on the whole array.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


# what a stage computes at once when it streams a set through a batched computation: a whole number of batches
# holding at most this many bytes of images (every batch at 32 px; one batch a block at 224 px)
STREAM_BLOCK_BYTES = 256 * 2**20


def block_rows(batch_size: int, row_bytes: int, limit: int = STREAM_BLOCK_BYTES) -> int:
    """The rows of a streamed block: a whole number of batches (at least one) of rows of ``row_bytes`` each,
    holding at most ``limit`` bytes, so that each row is still computed in its one-process batch."""
    return batch_size * max(1, limit // max(1, batch_size * row_bytes))


def row_bytes(array: Any) -> int:
    """The bytes of one row of ``array`` (one image of an image set)."""
    return int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize


def is_lazy(array: Any) -> bool:
    """Whether ``array`` reads its rows only when indexed (a stored array), rather than holding them."""
    return not isinstance(array, np.ndarray) and hasattr(array, "chunks")


def _chunk_rows(array: Any) -> int:
    chunks = getattr(array, "chunks", None)
    return int(chunks[0]) if is_lazy(array) and chunks else max(1, len(array))


def row_batches(array: Any, batch_size: int, rows: range | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, array[start:start + batch_size])`` over ``rows`` (default: every row) in consecutive batches from
    ``rows.start``, the last one shorter. A stored array is read one chunk at a time; a NumPy array yields views."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = range(len(array)) if rows is None else rows
    step = _chunk_rows(array)
    block_start, block = 0, None
    for start in range(rows.start, rows.stop, batch_size):
        stop = min(start + batch_size, rows.stop)
        if not is_lazy(array):
            yield start, array[start:stop]
            continue
        parts, at = [], start
        while at < stop:
            if block is None or not block_start <= at < block_start + len(block):
                block_start = at - at % step
                block = np.asarray(array[block_start:min(block_start + step, len(array))])
            end = min(stop, block_start + len(block))
            parts.append(block[at - block_start:end - block_start])
            at = end
        yield start, parts[0] if len(parts) == 1 else np.concatenate(parts)


def batches(array: Any, batch_size: int, rows: range | None = None) -> Iterator[np.ndarray]:
    """The batches of ``row_batches`` without their starts."""
    for _, batch in row_batches(array, batch_size, rows):
        yield batch


def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` (integer indices, any order, repeats allowed) reading only the chunks that hold them."""
    rows = np.asarray(rows, dtype=np.int64)
    if not is_lazy(array):
        return np.asarray(array)[rows]
    if not len(rows):
        return np.asarray(array[0:0])
    unique, inverse = np.unique(rows, return_inverse=True)
    if unique[0] < 0 or unique[-1] >= len(array):
        raise IndexError(f"row {unique[0] if unique[0] < 0 else unique[-1]} is out of range for {len(array)} rows")
    step = _chunk_rows(array)
    parts = []
    for chunk in np.unique(unique // step):
        inside = unique[(unique // step) == chunk]
        block = np.asarray(array[chunk * step:min((chunk + 1) * step, len(array))])
        parts.append(block[inside - chunk * step])
    return np.concatenate(parts)[inverse]


class RowWindow:
    """Rows ``start:stop`` of a stored array, read only when indexed or batched (a rank's share of a set)."""

    def __init__(self, array: Any, start: int, stop: int) -> None:
        self.array, self.start, self.stop = array, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def chunks(self) -> tuple[int, ...]:
        return self.array.chunks

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            first, last, stride = key.indices(len(self))
            if stride == 1:
                return np.asarray(self.array[self.start + first:self.start + max(first, last)])
        return take_rows(self.array, self.start + np.arange(len(self))[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)


def window(array: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of ``array``: a NumPy slice of a NumPy array, a ``RowWindow`` of a stored one."""
    return RowWindow(array, start, stop) if is_lazy(array) else array[start:stop]
