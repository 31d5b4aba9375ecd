"""Fine-tuning (or training from scratch) the CIFAR classifier F, and measuring its accuracy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .classifier import CifarClassifier
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
    device: torch.device | str = "cpu",
) -> list[float]:
    """SGD (nesterov) with a cosine schedule and crop/flip augmentation; returns the mean loss per epoch."""
    generator = seed_everything(seed)
    model.to(device).train()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))),
        batch_size=batch_size, shuffle=True, generator=generator, drop_last=len(images) > batch_size,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))

    def batch_loss(batch):
        x, y = batch
        x = random_crop_flip(to_float_images(x), generator).to(device)
        return F.cross_entropy(model(x), y.to(device)), len(y)

    history = run_epochs(loader, batch_loss, optimizer, schedule, epochs=epochs, what="classifier")
    model.eval().requires_grad_(False)
    return history


@torch.inference_mode()
def predict_logits(model: CifarClassifier, images: np.ndarray, batch_size: int = 500,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    model.to(device).eval()
    loader = DataLoader(TensorDataset(torch.from_numpy(images)), batch_size=batch_size)
    return torch.cat([model(to_float_images(x).to(device)).float().cpu() for (x,) in loader])


def accuracy(model: CifarClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    preds = predict_logits(model, images, batch_size).argmax(1).numpy()
    return float((preds == labels).mean() * 100.0)
