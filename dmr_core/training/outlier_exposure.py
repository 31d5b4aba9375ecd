"""Outlier Exposure (OE; Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure", ICLR
2019), the DMR paper's Table 2 OE row: a copy of the classifier F fine-tuned on the ID training images and on a set
of real outlier images, then scored by its maximum softmax probability (MSP, the OE paper's score for vision).

The objective (OE paper, eq. 1, with its vision experiments' choice of L_OE, the cross-entropy from f(x') to the
uniform distribution over the C classes):

    L = E_(x,y)~D_in [ −log σ_y(f(x)) ]  +  α · E_x'~D_out [ logsumexp_c f_c(x') − (1/C) Σ_c f_c(x') ],  α = 0.5

computed per image by pytorch-ood's ``OutlierExposureLoss`` (outliers labelled −1) and averaged over the ID images
and over the outliers separately, as the OE code does. The recipe is the OE paper's fine-tuning one: SGD with
Nesterov momentum 0.9 and weight decay 5·10⁻⁴, a cosine schedule, every ID batch paired with twice as many
outliers, and crop/flip augmentation of both. Unlike DMR, which trains a head beside the frozen F, OE changes F
itself: the copy's accuracy is reported beside its OOD metrics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..device import autocast, batch_loader, place_images, place_model, resolve_device
from ..images import to_float_images
from ..nets.classifier_base import Classifier
from .classifier import predict_logits, random_crop_flip
from .loop import BatchLoss, run_epochs, seed_everything

# The OE paper's fine-tuning recipe (its code's oe_tune.py): the settings not exposed as params.
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
OUTLIERS_PER_ID_IMAGE = 2   # an ID batch of 128 goes with 256 outliers
# What the metrics file says when baselines.oe_outliers is null; the report shows it.
NOT_RUN_REASON = "no outlier set given: set baselines.oe_outliers"


@dataclass(frozen=True)
class OutlierExposureConfig:
    """How the copy of F is fine-tuned (params.yaml ``baselines.oe_*``)."""

    epochs: int
    batch_size: int
    lr: float
    alpha: float
    seed: int


def not_run() -> dict:
    """The metrics of a run without an outlier set: the row is not computed, and the report says why."""
    return {"run": False, "reason": NOT_RUN_REASON}


def outlier_exposure_loss(logits: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """Mean cross-entropy over the ID images (labels ≥ 0) plus α × the mean cross-entropy to the uniform
    distribution over the outliers (labels < 0): the OE objective above, from pytorch-ood's per-image loss."""
    from pytorch_ood.loss import OutlierExposureLoss  # here: the stage imports this module also when OE is not run

    per_image = OutlierExposureLoss(alpha=alpha, reduction="none")(logits, labels)
    known = labels >= 0
    loss = per_image.new_zeros(())
    if known.any():
        loss = loss + per_image[known].mean()
    if (~known).any():
        loss = loss + per_image[~known].mean()
    return loss


class OutlierDraws:
    """Outlier indices for each step: consecutive slices of a seeded random permutation of the outlier set, a new
    permutation whenever one is used up, so that every outlier is seen equally often and no epoch needs its own
    loader (an outlier set may be smaller or larger than what an epoch uses)."""

    def __init__(self, count: int, rng: torch.Generator) -> None:
        if count < 1:
            raise ValueError("Outlier Exposure needs at least one outlier image")
        self.count, self.rng = count, rng
        self.order, self.position = torch.randperm(count, generator=rng), 0

    def take(self, n: int) -> Tensor:
        parts = []
        while n > 0:
            if self.position == self.count:
                self.order, self.position = torch.randperm(self.count, generator=self.rng), 0
            step = min(n, self.count - self.position)
            parts.append(self.order[self.position:self.position + step])
            self.position += step
            n -= step
        return torch.cat(parts)


def finetune_with_outliers(
    model: Classifier, images: np.ndarray, labels: np.ndarray, outliers: np.ndarray, config: OutlierExposureConfig,
    device: torch.device | None = None,
) -> tuple[Classifier, list[float]]:
    """A copy of ``model`` fine-tuned with Outlier Exposure on ID ``images`` / ``labels`` (uint8 N×H×W×3, class
    indices) and ``outliers`` (uint8 M×H×W×3); ``model`` itself is left as it was. Returns the copy, frozen in
    eval mode, and the mean loss of each epoch. An epoch is one pass over the ID images, each batch of
    ``config.batch_size`` with ``OUTLIERS_PER_ID_IMAGE`` times as many outliers. Deterministic given the seed."""
    c = config
    device = device or resolve_device()
    rng = seed_everything(c.seed)
    tuned = place_model(copy.deepcopy(model), device).requires_grad_(True).train()
    loader = batch_loader(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device),
                          batch_size=c.batch_size, shuffle=True, rng=rng, drop_last=len(images) > c.batch_size)
    outlier_images = torch.from_numpy(outliers).to(device)
    draws = OutlierDraws(len(outliers), rng)
    optimizer = torch.optim.SGD(tuned.parameters(), lr=c.lr, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, c.epochs * len(loader)))

    def batch_loss(batch, epoch: int) -> BatchLoss:
        x, y = batch
        x_out = outlier_images[draws.take(OUTLIERS_PER_ID_IMAGE * len(y)).to(device)]
        # ID images and outliers in one forward pass, as the OE code does: BatchNorm sees both
        both = place_images(random_crop_flip(to_float_images(torch.cat([x, x_out])), rng), device)
        targets = torch.cat([y, torch.full((len(x_out),), -1, dtype=y.dtype, device=y.device)])
        with autocast(device):
            logits = tuned(both)
        return BatchLoss(outlier_exposure_loss(logits.float(), targets, c.alpha), len(y))

    history = run_epochs(loader, batch_loss, optimizer, schedule, epochs=c.epochs, what="outlier exposure").loss
    tuned.eval().requires_grad_(False)
    return tuned, history


def msp_scores(model: Classifier, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The OOD score of each image (uint8 N×H×W×3): its negated maximum softmax probability (pytorch-ood
    ``MaxSoftmax``; higher = more OOD), the score the OE paper evaluates its fine-tuned classifiers by."""
    from pytorch_ood.detector import MaxSoftmax

    return MaxSoftmax.score(predict_logits(model, images, batch_size)).numpy().astype(np.float32)
