"""Classifier architectures, pretrained weights, and checkpoint checks."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dmr_core.nets.classifier import (
    build_classifier,
    load_pretrained,
)
from dmr_core.nets.features import extract_features
from dmr_core.training.classifier import ClassifierTrainingConfig, predict_logits, train_classifier


def _models_available() -> bool:
    home = os.environ.get("DMR_DATA_HOME")
    return bool(home) and (Path(home).parent / "models" / "resnet20-12fca82f.th").is_file()


@pytest.mark.parametrize("arch,channels", [("resnet20", 64), ("resnet56", 64), ("wrn40_2", 128)])
def test_representation_shapes(arch, channels):
    model = build_classifier(arch).eval()
    x = torch.rand(2, 3, 32, 32)
    fmap = model.feature_map(x)
    assert fmap.shape == (2, channels, 8, 8)
    assert model.penultimate(fmap).shape == (2, channels)
    torch.testing.assert_close(model.logits_from_penultimate(model.penultimate(fmap)), model(x))


def test_extract_features_returns_all_representations():
    model = build_classifier("resnet20").eval()
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8).numpy()
    out = extract_features(model, images, batch_size=2)
    assert out["feature_map"].shape == (5, 64, 8, 8) and out["feature_map"].dtype.name == "float16"
    assert out["penultimate"].shape == (5, 64) and out["logits"].shape == (5, 10)


@pytest.mark.parametrize("arch", ["resnet20", "wrn40_2"])
def test_inference_copy_computes_the_same_function_and_leaves_the_model_alone(arch):
    torch.manual_seed(0)
    model = build_classifier(arch)
    for m in model.modules():  # non-trivial running statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = model.for_inference()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert batch_norms == (0 if arch == "resnet20" else sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()))


@pytest.mark.skipif(not _models_available(), reason="pretrained weights not provided offline")
def test_pretrained_resnet20_loads_and_predicts():
    model = load_pretrained("resnet20").eval()
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_model_stays_trainable_after_inference():
    """Scoring (features, accuracy) must not turn the weights into inference tensors."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 10
    model = build_classifier("resnet20")
    predict_logits(model, images, batch_size=4)
    extract_features(model, images, batch_size=4)
    history = train_classifier(model, images, labels, ClassifierTrainingConfig(epochs=1, batch_size=4, lr=0.01,
                                                                               momentum=0.9, weight_decay=0.0, seed=0))
    assert len(history.loss) == 1 and np.isfinite(history.loss[0])
    # the training accuracy counts the 8 images of the one epoch: a multiple of 1/8
    assert len(history.accuracy) == 1 and (history.accuracy[0] * 8 / 100).is_integer()
