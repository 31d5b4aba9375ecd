"""A NaN or inf loss stops training with a message naming the epoch and step."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import HEAD, blobs

from dmr_core.errors import NonFiniteLossError
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.generator import ConvVAE
from dmr_core.training.classifier import ClassifierTrainingConfig, train_classifier
from dmr_core.training.generator import GeneratorTrainingConfig, train_generator
from dmr_core.training.head import train_rejection_head


def test_nan_features_stop_training_with_location():
    id_feats, ood_feats = blobs()
    id_feats[3, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"rejection head: loss is nan at epoch 1, step \d+"):
        train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=1))


def test_classifier_with_a_nan_weight_stops_before_updating():
    """A corrupt initialisation (a NaN weight) is caught at the first step, before the update spreads it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    model = build_classifier("resnet20")
    with torch.no_grad():
        model.linear.bias[3] = float("nan")
    conv_before = model.conv1.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match=r"classifier: loss is nan at epoch 1, step 0"):
        train_classifier(model, images, labels, ClassifierTrainingConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9,
                                                                         weight_decay=0.0, seed=0))
    assert torch.equal(model.conv1.weight.detach().cpu(), conv_before)  # training moved it to the resolved device


def test_diverging_generator_stops_with_location():
    images = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(NonFiniteLossError, match=r"generator: loss is (nan|inf) at epoch \d+, step \d+"):
        train_generator(ConvVAE(latent_dim=8, base_channels=4), images,
                        GeneratorTrainingConfig(epochs=3, batch_size=16, lr=1e12, beta_kl=1.0, seed=0))
