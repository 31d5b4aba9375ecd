"""Fine-tuning (or training from scratch) the CIFAR classifier F, and measuring its accuracy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import CifarClassifier
from .device import autocast, batch_loader, place_images, place_model, resolve_device
from .training import random_crop_flip, run_epochs, seed_everything, to_float_images


def train_classifier(
    model: CifarClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    device: torch.device | None = None,
) -> list[float]:
    """SGD (nesterov) with a cosine schedule and crop/flip augmentation; returns the mean loss per epoch.

    The images stay resident on ``device`` (default: ``resolve_device()``) for the whole run."""
    device = device or resolve_device()
    generator = seed_everything(seed)
    place_model(model, device).train()
    loader = batch_loader(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device),
                          batch_size=batch_size, shuffle=True, generator=generator, drop_last=len(images) > batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))

    def batch_loss(batch):
        x, y = batch
        x = place_images(random_crop_flip(to_float_images(x), generator), device)
        with autocast(device):
            return F.cross_entropy(model(x), y), len(y)

    history = run_epochs(loader, batch_loss, optimizer, schedule, epochs=epochs, what="classifier")
    model.eval().requires_grad_(False)
    return history


def predict_logits(model: CifarClassifier, images: np.ndarray, batch_size: int = 500,
                   device: torch.device | None = None) -> torch.Tensor:
    device = device or resolve_device()
    place_model(model, device).eval()  # outside inference mode: the weights must stay trainable
    with torch.inference_mode(), autocast(device):
        return torch.cat([model(place_images(to_float_images(x), device)).float().cpu()
                          for (x,) in batch_loader(torch.from_numpy(images), batch_size=batch_size)])


def accuracy(model: CifarClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    preds = predict_logits(model, images, batch_size).argmax(1).numpy()
    return float((preds == labels).mean() * 100.0)
