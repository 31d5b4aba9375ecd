"""Small helpers shared by the training loops: seeding, image batches, loss checks."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .errors import NonFiniteLossError  # noqa: F401  (re-exported)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for DataLoader shuffling.

    With a GPU present it also selects deterministic kernels (cuDNN without autotuning, cuBLAS with a fixed
    workspace), so that a seed gives the same weights on a GPU run after run, as it does on the CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def check_finite(loss: Tensor, what: str, epoch: int, step: int) -> float:
    """Return ``loss`` as a float, or stop with a message naming where it went non-finite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{what}: loss is {value} at epoch {epoch}, step {step}; lower the learning rate or check the inputs"
        )
    return value


def to_float_images(batch_uint8: Tensor) -> Tensor:
    """N×32×32×3 uint8 → N×3×32×32 float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8_images(batch_float: Tensor) -> np.ndarray:
    """N×3×32×32 float in [0, 1] → N×32×32×3 uint8 (rounded, clipped)."""
    return batch_float.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation (pad-4 random crop + horizontal flip), per sample, vectorised."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode="reflect")
    # drawn on the CPU generator so a GPU run sees the same crops as a CPU run
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def run_epochs(
    loader: Iterable,
    batch_loss: Callable[[object], tuple[Tensor, int]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    what: str,
) -> list[float]:
    """The shared training loop: per batch, ``batch_loss(batch) -> (loss, batch size)``, one optimiser and
    scheduler step; stops at the first non-finite loss. Returns the mean loss of each epoch."""
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        progress = tqdm(loader, desc=f"{what} epoch {epoch + 1}/{epochs}", leave=False)
        for step, batch in enumerate(progress):
            loss, size = batch_loss(batch)
            value = check_finite(loss, what, epoch + 1, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += value * size
            count += size
            progress.set_postfix(loss=f"{total / count:.4g}")
        history.append(total / max(count, 1))
    return history
