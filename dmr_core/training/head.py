"""Training the rejection head B: binary cross-entropy on logits, ID training features (target 0) against the
features of synthesised OOD images (target 1), with the classifier F frozen (paper §3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from ..data.streams import take_rows
from ..device import autocast, batch_loader, resolve_device
from ..distributed import split_over_ranks
from ..nets.classifier_base import Classifier
from ..nets.features import extract_features
from ..nets.rejection_head import RejectionHead
from ..synthesis.selection import max_softmax, most_confident
from .loop import BatchLoss, History, run_epochs, seed_everything


@dataclass(frozen=True)
class HeadConfig:
    """The head and how it trains (params.yaml section ``head``, without ``feature``)."""

    hidden: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str           # cosine | constant
    seed: int
    input_dropout: float = 0.0
    synth_keep: float = 1.0  # the share of synthesised images trained on: those F is most confident on


def train_rejection_head(
    id_features: np.ndarray, ood_features: np.ndarray, config: HeadConfig, device: torch.device | None = None,
) -> tuple[RejectionHead, History]:
    """Fit B on ID (0) vs synthesised OOD (1) features with SGD; returns (head, loss and training accuracy per
    epoch, a sample counted right when its logit's sign matches its target).

    All features stay resident on ``device`` (default: ``resolve_device()``); batches are gathered by index
    there, with no per-sample Python work. The returned head is on the CPU."""
    c = config
    device = device or resolve_device()
    rng = seed_everything(c.seed)
    if id_features.shape[1:] != ood_features.shape[1:]:
        raise ValueError(f"ID features {id_features.shape[1:]} and OOD features {ood_features.shape[1:]} differ")
    features = torch.from_numpy(np.concatenate([id_features, ood_features])).to(device)
    targets = torch.cat([torch.zeros(len(id_features)), torch.ones(len(ood_features))]).to(device)
    head = RejectionHead(int(np.prod(features.shape[1:])), c.hidden, c.input_dropout).to(device)
    head.input_dropout.reseed(c.seed)
    loader = batch_loader(features, targets, batch_size=c.batch_size, shuffle=True, rng=rng)
    # fused: the same SGD update in one kernel; the step over 8.4M weights otherwise costs ~40% of a batch on CPU
    optimizer = torch.optim.SGD(head.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                                weight_decay=c.weight_decay, fused=True)
    steps = max(1, c.epochs * len(loader))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if c.schedule == "cosine"
                 else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))

    def batch_loss(batch, epoch: int) -> BatchLoss:
        x, y = batch
        with autocast(device):
            logits = head(x).float()
            return BatchLoss(nnf.binary_cross_entropy_with_logits(logits, y), len(y),
                             correct=((logits > 0) == (y > 0.5)).sum())

    history = run_epochs(loader, batch_loss, optimizer, scheduler, epochs=c.epochs, what="rejection head")
    head.cpu().eval().requires_grad_(False)
    return head, history


@dataclass
class TrainedHead:
    head: RejectionHead
    history: History                # loss and training accuracy per epoch
    synth_features: np.ndarray      # F's representation of the synthesised images the head was trained on


def train_head_on_images(
    classifier: Classifier, id_features: np.ndarray, synth_images: Any, feature: str,
    config: HeadConfig, batch_size: int = 500,
) -> TrainedHead:
    """F's ``feature`` representation of the synthesised images (uint8 N×S×S×3: an array or a stored set, read a
    batch at a time), or of the ``synth_keep`` share
    F is most confident on (:mod:`..synthesis.selection`), then B trained on the ID training features (the same
    representation) against it: what DMR and every synthesis baseline share. Under
    torchrun the images go through F split over the ranks, each rank getting every feature back."""
    if config.synth_keep < 1:  # only the synthesised images nearest the ID classes as F sees them
        confidence = split_over_ranks(
            lambda images: max_softmax(extract_features(classifier, images, batch_size, desc="synth confidence")
                                       ["logits"]), batch_size)(synth_images)
        synth_images = take_rows(synth_images, most_confident(confidence, config.synth_keep))
    synth_features = split_over_ranks(
        lambda images: extract_features(classifier, images, batch_size, desc="synth features")[feature],
        batch_size)(synth_images)
    head, history = train_rejection_head(id_features, synth_features, config)
    return TrainedHead(head, history, synth_features)
