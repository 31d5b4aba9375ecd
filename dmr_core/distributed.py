"""Data-parallel execution over several processes with ``torch.distributed`` (gloo on the CPU, NCCL on CUDA).

Like ``DMR_DEVICE``, the process count is an execution setting read from the environment (``DMR_NPROC``, default
1), not a params.yaml key, so that moving a run to more processes does not invalidate DVC's cache. With one
process nothing here changes a code path: every helper is the identity, and results stay byte for byte.

- Training: every rank draws the same global batch (the order rank 0 draws, broadcast once per epoch), takes its
  contiguous share of it (``shard_range`` over the batch) and the gradients are averaged over ranks before each
  optimiser step — the data-parallel SGD of DDP (Li et al., "PyTorch Distributed", VLDB 2020), with the global
  batch, hence the recipe, unchanged. BatchNorm statistics stay per rank and floats are summed in another order,
  so W-rank weights differ from 1-rank weights within a tolerance (tests/unit/test_distributed.py measures it).
- Inference: rows are split by rank in whole zarr chunks (``chunk_shard``), so each rank writes its own disjoint
  set of chunk files and no two ranks ever touch one chunk; the result equals the one-process result. Random
  draws (which sources a synthesised image mixes, its λ, which images get detail, sampled z) are cheap and made
  for the whole set on every rank from the same seed; only the per-row work (encode, decode, F) is split, in the
  very batches one process runs (``batch_aligned``, ``rows_in_batches``), so every row comes out to the same bits.
  An intermediate set every rank needs whole (a synthesis baseline's decoded images, F's features of the
  synthesised images) is computed in whole batches per rank and gathered (``split_over_ranks``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

import torch
import torch.distributed as dist

from .data.streams import window
from .runtime.machine import available_memory, usable_cores

NPROC_ENV = "DMR_NPROC"
# torchrun sets these in every worker it starts
_WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def requested_processes(env: dict[str, str] | None = None) -> int:
    """The process count asked for by ``DMR_NPROC`` (default 1); anything else than a positive integer fails."""
    value = (os.environ if env is None else env).get(NPROC_ENV, "1").strip() or "1"
    if not (value.isascii() and value.isdigit()) or int(value) < 1:  # isdigit alone takes '²', which int() refuses
        raise ValueError(f"{NPROC_ENV}={value!r}: give a positive number of processes (1, the default, runs none)")
    return int(value)


# what one CPU rank of a stage needs: the default run's ranks peak near 370 MB RSS (torch, the nets, a batch); the
# margin covers the larger Table 5 nets. Used only to cap DMR_NPROC, never to size work.
RANK_MEMORY_BYTES = 512 * 2**20


def check_process_count(nproc: int, cores: int | None = None, memory: int | None = None,
                        rank_memory: int = RANK_MEMORY_BYTES) -> None:
    """Refuse, before any process starts, a process count this machine cannot run: more ranks than cores (they
    would only take turns, each holding its own memory) or than the available memory holds at ``rank_memory``
    each (the kernel's OOM killer would end the stage without a word)."""
    cores = usable_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    by_memory = max(1, memory // rank_memory) if memory is not None else nproc
    limit = min(cores, by_memory)
    if nproc > limit:
        memory_text = f"{memory / 2**30:.1f} GiB of available memory" if memory is not None else "unknown memory"
        raise ValueError(f"{NPROC_ENV}={nproc} is more processes than this machine can run: {cores} cores and "
                         f"{memory_text} (a rank needs about {rank_memory / 2**30:.1f} GiB) allow at most {limit}; "
                         f"set {NPROC_ENV} to {limit} or less")


def is_worker(env: dict[str, str] | None = None) -> bool:
    """Whether this process was started by torchrun (it then holds a rank)."""
    env = os.environ if env is None else env
    return all(key in env for key in _WORKER_ENV)


def should_relaunch(env: dict[str, str] | None = None) -> bool:
    """Whether a stage must re-execute itself under torchrun: more than one process asked, not yet a worker."""
    return requested_processes(env) > 1 and not is_worker(env)


def relaunch_command(module: str, argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command line that runs ``python -m <module> <argv>`` in ``nproc`` processes on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *argv]


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints summaries and writes whole-stage outputs."""
    return rank() == 0


def threads_per_rank(nproc: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``nproc`` ranks: the cores split evenly (at least one), so that W ranks do not
    oversubscribe the CPU."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, nproc))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join torchrun's process group for the block when this is a worker (gloo on the CPU, NCCL when the worker
    has a GPU), with the CPU threads split between the ranks; without torchrun, a no-op."""
    if not is_worker():
        yield
        return
    nproc = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", nproc))))
    use_cuda = torch.cuda.is_available() and os.environ.get("DMR_DEVICE", "auto").lower() != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_range(n: int, world: int | None = None, at: int | None = None) -> range:
    """Rank ``at``'s contiguous share of ``n`` items out of ``world``: ``[⌈at·n / world⌉, ⌈(at+1)·n / world⌉)``.
    Shares are disjoint, cover every item in order, and differ in size by at most one; the larger ones go to the
    first ranks, so that rank 0, which shows the progress, has a share whenever any rank has one."""
    world = world_size() if world is None else world
    at = rank() if at is None else at
    return range(-(-at * n // world), -(-(at + 1) * n // world))


def chunk_shard(n: int, rows_per_chunk: int, world: int | None = None, at: int | None = None) -> range:
    """Rank ``at``'s rows of an ``n``-row array chunked by ``rows_per_chunk``: a ``shard_range`` of whole chunks,
    so that ranks writing their rows never share a chunk (zarr writes a chunk as one file, read-modify-write)."""
    chunks = shard_range(-(-n // rows_per_chunk) if n else 0, world, at)
    return range(min(n, chunks.start * rows_per_chunk), min(n, chunks.stop * rows_per_chunk))


def batch_aligned(rows: range, batch_size: int, n: int) -> range:
    """``rows`` widened to whole batches of the one-process batching (``[k·b, (k+1)·b)``), so that every row is
    computed in the very batch it is computed in by one process, hence to the same bits (a CPU kernel's result
    may depend on the batch it runs in); a rank computes at most one batch more on each side."""
    if not len(rows):
        return rows
    return range(rows.start // batch_size * batch_size, min(n, -(-rows.stop // batch_size) * batch_size))


def _cut(result: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of an array, or of every array in a tuple / dict of them."""
    if isinstance(result, dict):
        return {key: _cut(value, start, stop) for key, value in result.items()}
    if isinstance(result, tuple):
        return tuple(_cut(value, start, stop) for value in result)
    return result[start:stop]


def rows_in_batches(compute: Callable[[range], Any], rows: range, batch_size: int, n: int) -> Any:
    """``compute(span)``'s rows ``rows``, where ``span`` is ``rows`` widened to whole batches of the one-process
    batching (``batch_aligned``) and ``compute`` returns the rows of ``span`` (an array, or a tuple / dict of
    arrays), computed in batches of ``batch_size`` from ``span.start``: each row then comes out to the bits one
    process gives it."""
    span = batch_aligned(rows, batch_size, n)
    return _cut(compute(span), rows.start - span.start, rows.stop - span.start)


def split_over_ranks(compute: Callable[[np.ndarray], np.ndarray], batch_size: int
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """``compute`` (rows in → as many rows out, batched by ``batch_size`` from the first row) with the rows split
    over ranks in whole batches and the parts gathered, so that every rank gets the whole result, equal to the
    one-process one (each batch is the batch one process computes). With one process, ``compute`` itself."""
    def split(inputs: np.ndarray) -> np.ndarray:
        if world_size() == 1 or len(inputs) == 0:
            return compute(inputs)
        rows = chunk_shard(len(inputs), batch_size)
        part = compute(window(inputs, rows.start, rows.stop)) if len(rows) else None
        return np.concatenate([p for p in all_gather(part) if p is not None])
    return split


def broadcast(value: object) -> object:
    """Rank 0's ``value`` on every rank (itself with one process)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: object) -> list[object]:
    """Every rank's ``value``, in rank order (``[value]`` with one process)."""
    if world_size() == 1:
        return [value]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if world_size() > 1:
        dist.barrier()


def average_gradients(parameters: Sequence[torch.Tensor], size: int) -> None:
    """Replace every gradient by the mean over ranks weighted by each rank's batch share ``size``, in one flat
    all-reduce (what DDP's bucketed all-reduce computes, weighted so that uneven shares give the gradient of the
    global batch's mean loss); with one process, nothing."""
    world = world_size()
    if world == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) * size for g in grads] + [torch.tensor([float(size)], device=grads[0].device
                                                                           if grads else None)])
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(*values: float) -> list[float]:
    """The sum of each value over ranks (the values themselves with one process)."""
    if world_size() == 1:
        return list(values)
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


class RankBatches:
    """This rank's share of every global batch of ``batches`` (a batch sampler): all ranks see the order rank 0
    drew — broadcast once per epoch, since ranks consume their shared seed differently when an uneven last
    batch gives them different augmentation draws — and each takes ``shard_range`` of each batch. A batch with
    fewer samples than ranks (a short last batch) is left out: an empty share has no mean loss."""

    def __init__(self, batches: Sequence[list[int]] | torch.utils.data.BatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)  # an upper bound when a short last batch is left out

    def __iter__(self) -> Iterator[list[int]]:
        epoch = broadcast(list(self.batches))
        world = world_size()
        for batch in epoch:
            if len(batch) >= world:  # a last batch too short to give every rank a sample is left out
                yield [batch[i] for i in shard_range(len(batch))]
