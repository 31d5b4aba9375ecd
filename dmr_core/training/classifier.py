"""Fine-tuning (or training from scratch) the classifier F, and measuring its accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as nnf

from ..data.streams import batches
from ..device import autocast, batch_loader, place_images, place_model, resolve_device
from ..images import to_float_images
from ..nets.classifier_base import Classifier
from .loop import BatchLoss, History, run_epochs, seed_everything


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """How F trains (params.yaml section ``classifier``, without the architecture and initialisation keys)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int


def random_crop_flip(images: Tensor, rng: torch.Generator, padding: int | None = None) -> Tensor:
    """Standard CIFAR augmentation (pad-4 random crop + horizontal flip), per sample, vectorised; the padding is an
    eighth of the side unless given (4 px at 32 px), so larger images are shifted as far relative to their size."""
    n, _, h, w = images.shape
    padding = max(1, min(h, w) // 8) if padding is None else padding
    padded = nnf.pad(images, (padding,) * 4, mode="reflect")
    # drawn on the CPU RNG so a GPU run sees the same crops as a CPU run
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=rng).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=rng).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=rng) < 0.5).to(images.device)
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def train_classifier(
    model: Classifier, images: np.ndarray, labels: np.ndarray, config: ClassifierTrainingConfig,
    device: torch.device | None = None,
) -> History:
    """SGD (nesterov) with a cosine schedule and crop/flip augmentation; returns the mean loss and the training
    accuracy per epoch.

    The images stay resident on ``device`` (default: ``resolve_device()``) for the whole run."""
    c = config
    device = device or resolve_device()
    rng = seed_everything(c.seed)
    place_model(model, device).train()
    loader = batch_loader(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device),
                          batch_size=c.batch_size, shuffle=True, rng=rng, drop_last=len(images) > c.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0,
                                weight_decay=c.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, c.epochs * len(loader)))

    def batch_loss(batch, epoch: int) -> BatchLoss:
        x, y = batch
        x = place_images(random_crop_flip(to_float_images(x), rng), device)
        with autocast(device):
            logits = model(x)
            return BatchLoss(nnf.cross_entropy(logits, y), len(y), correct=(logits.argmax(1) == y).sum())

    history = run_epochs(loader, batch_loss, optimizer, schedule, epochs=c.epochs, what="classifier")
    model.eval().requires_grad_(False)
    # a classifier used as given (0 epochs) has an empty accuracy curve, not none: its curve keeps its columns
    return history if history.accuracy is not None else History(history.loss, [])


def predict_logits(model: Classifier, images: Any, batch_size: int = 500,
                   device: torch.device | None = None) -> torch.Tensor:
    """F's logits of uint8 N×S×S×3 images (an array or a stored set, read a batch at a time)."""
    device = device or resolve_device()
    place_model(model, device).eval()  # outside inference mode: the weights must stay trainable
    with torch.inference_mode(), autocast(device):
        return torch.cat([model(place_images(to_float_images(torch.from_numpy(x)), device)).float().cpu()
                          for x in batches(images, batch_size)])


def accuracy(model: Classifier, images: Any, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    preds = predict_logits(model, images, batch_size).argmax(1).numpy()
    return float((preds == labels).mean() * 100.0)
