"""Where the tensors live: CUDA when present (with automatic mixed precision), else the CPU.

The choice is an execution setting, not a result-defining parameter, so it is read from the
environment (``DMR_DEVICE=auto|cpu|cuda``, default ``auto``) rather than params.yaml: moving a run to
a GPU does not invalidate DVC's cache. Results on a GPU differ from CPU results in the last digits.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from .distributed import RankBatches, world_size

DEVICE_ENV = "DMR_DEVICE"


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (the default, also via ``DMR_DEVICE``) picks CUDA when available; ``cuda`` without a GPU fails."""
    name = (name or os.environ.get(DEVICE_ENV) or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a convolutional model to ``device`` in channels-last layout (1.2–1.5× faster convolutions on
    this project's CPUs, measured by the bench; the usual layout for tensor cores on a GPU)."""
    return model.to(device=device, memory_format=torch.channels_last)


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An N×C×H×W float batch on ``device`` in channels-last layout, matching ``place_model``."""
    return images.to(device).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op on the CPU, whose cores here lack bf16 units."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool = False,
                 rng: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader that indexes whole batches at once (no per-sample collate), so tensors already
    resident on a GPU stay there. With ``shuffle`` the order is drawn from ``rng``; under torchrun (several
    ranks) a shuffled loader yields this rank's share of each global batch (``dmr_core.distributed``)."""
    dataset = TensorDataset(*tensors)
    order = RandomSampler(dataset, generator=rng) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(order, batch_size, drop_last)
    if shuffle and world_size() > 1:  # training under torchrun: this rank's share of each global batch
        batches = RankBatches(batches)
    return DataLoader(dataset, sampler=batches, batch_size=None)
