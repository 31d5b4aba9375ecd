"""The one training loop every model here trains on, with seeding and the non-finite-loss check."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..distributed import average_gradients, sum_over_ranks
from ..errors import NonFiniteLossError


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch RNG for shuffling and augmentation draws.

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


class BatchLoss(NamedTuple):
    """What a batch function returns: the loss to minimise, the batch size, optionally the value to report
    per epoch when it is not the loss itself (the VAE-GAN reports its VAE loss, without the adversarial term), and,
    for a model that classifies, how many of the batch's samples its forward pass got right (before the step)."""

    loss: Tensor
    size: int
    reported: Tensor | None = None
    correct: Tensor | None = None


@dataclass(frozen=True)
class History:
    """The training curves of one run, one value per epoch: the size-weighted mean reported loss and, where every
    batch counted its correct samples, the percentage of training samples classified right (on the training
    batches as they were seen, augmented and in training mode, before each step: a free by-product of the loss,
    not a held-out accuracy)."""

    loss: list[float]
    accuracy: list[float] | None = None


def run_epochs(
    loader: Iterable,
    batch_loss: Callable[[object, int], BatchLoss],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    what: str,
    after_step: Callable[[int, int], None] | None = None,
) -> History:
    """Per batch: ``batch_loss(batch, epoch)`` (epoch counted from 0), a finiteness check, one optimiser and
    scheduler step, then ``after_step(epoch, step)`` if given (e.g. a critic's own update). Returns the
    size-weighted mean reported loss of each epoch, and the training accuracy of each epoch where the batches
    count their correct samples. Under torchrun each rank's batch is its share of the global batch; the gradients
    are averaged over ranks before the step and the epoch's loss and correct counts are summed over ranks."""
    history, accuracy = [], []
    for epoch in range(epochs):
        total, count, hits = 0.0, 0, None
        progress = tqdm(loader, desc=f"{what} epoch {epoch + 1}/{epochs}", leave=False)
        for step, batch in enumerate(progress):
            result = batch_loss(batch, epoch)
            value = check_finite(result.loss, what, epoch + 1, step)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            # data-parallel: the gradient of the global batch, from every rank's share (nothing with one process)
            average_gradients([p for group in optimizer.param_groups for p in group["params"]], result.size)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(epoch, step)
            if result.reported is not None:
                value = float(result.reported.detach())
            total += value * result.size
            count += result.size
            if result.correct is not None:
                hits = (hits or 0) + int(result.correct.detach())
            progress.set_postfix(loss=f"{total / count:.4g}",
                                 **({} if hits is None else {"accuracy": f"{100 * hits / count:.1f}%"}))
        if hits is None:
            total, count = sum_over_ranks(total, count)
        else:
            total, count, hits = sum_over_ranks(total, count, hits)
        history.append(total / max(count, 1))
        if hits is not None:
            accuracy.append(100.0 * hits / max(count, 1))
    return History(history, accuracy if epochs and len(accuracy) == epochs else None)
