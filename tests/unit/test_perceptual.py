"""The classifier-perceptual generator loss: the distance, what it trains, and what it leaves alone."""

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf

from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.generator import ConvVAE
from dmr_core.training.generator import GeneratorTrainingConfig, train_generator
from dmr_core.training.perceptual import ClassifierPerceptualLoss, default_layers


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return build_classifier("resnet20").eval()


def test_distance_is_zero_for_identical_images_and_grows_with_blur(classifier):
    loss = ClassifierPerceptualLoss(classifier, images_per_batch=8)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    blurred = nnf.avg_pool2d(images, 3, 1, 1, count_include_pad=False)
    smoother = nnf.avg_pool2d(images, 7, 1, 3, count_include_pad=False)
    assert loss(images, images).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < loss(blurred, images).item() < loss(smoother, images).item()
    # unit-normalised channel vectors: each stage's term is at most 4 (opposite unit vectors)
    assert loss(smoother, images).item() <= 4 * len(loss.layers)


def test_only_the_first_images_of_the_batch_are_measured(classifier):
    loss = ClassifierPerceptualLoss(classifier, images_per_batch=2)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    changed = images.clone()
    changed[2:] = 0.5  # beyond the measured slice
    assert loss(changed, images).item() == pytest.approx(0.0, abs=1e-6)
    changed[0] = 0.5
    assert loss(changed, images).item() > 0


def test_gradient_reaches_the_reconstructions_but_not_the_classifier(classifier):
    loss = ClassifierPerceptualLoss(classifier, images_per_batch=4)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reconstructions = nnf.avg_pool2d(images, 3, 1, 1).requires_grad_(True)
    loss(reconstructions, images).backward()
    assert reconstructions.grad is not None and reconstructions.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    loss.train()
    assert not classifier.training, "batch-norm statistics of the frozen classifier must not move"


def test_layers_are_checked_and_default_to_every_resolution_stage(classifier):
    assert default_layers(classifier) == ("layer1", "layer2", "layer3")
    assert default_layers(build_classifier("wrn40_2")) == ("blocks.5", "blocks.11", "blocks.17")
    with pytest.raises(ValueError, match="no module"):
        ClassifierPerceptualLoss(classifier, layers=("layer9",))


def test_perceptual_term_changes_training_deterministically(classifier):
    images = (np.random.default_rng(0).random((32, 32, 32, 3)) * 255).astype(np.uint8)

    def train(weight):
        torch.manual_seed(0)
        model = ConvVAE(latent_dim=8, base_channels=4)
        config = GeneratorTrainingConfig(epochs=2, batch_size=16, lr=1e-3, beta_kl=0.1, seed=3,
                                         perceptual_weight=weight, perceptual_start_epoch=1)
        history = train_generator(model, images, config, ClassifierPerceptualLoss(classifier, images_per_batch=8),
                                  device=torch.device("cpu")).loss
        return model, history

    plain, plain_history = train(0.0)
    model, history = train(50.0)
    again, history_again = train(50.0)
    assert history == history_again
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the term joins from the second epoch: the first epoch is the plain VAE's, the second is not
    assert history[0] == plain_history[0]
    assert history[1] != plain_history[1]
    assert any(not torch.equal(p, q) for p, q in zip(plain.state_dict().values(), model.state_dict().values()))
