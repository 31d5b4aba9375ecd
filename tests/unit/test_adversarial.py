"""The adversarial (VAE-GAN) generator training: loss pieces and a tiny deterministic run."""

import numpy as np
import pytest
import torch

from dmr_core.nets.critic import PatchCritic
from dmr_core.nets.generator import ConvVAE
from dmr_core.training.generator import (
    GeneratorTrainingConfig,
    balance_weight,
    critic_hinge_loss,
    train_generator,
)


def test_hinge_loss_is_zero_only_beyond_the_margins():
    assert critic_hinge_loss(torch.full((4,), 1.5), torch.full((4,), -2.0)).item() == 0.0
    # real at 0 and fake at 0: each side pays its margin of 1
    assert critic_hinge_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)
    assert critic_hinge_loss(torch.full((4,), -1.0), torch.full((4,), 1.0)).item() == pytest.approx(4.0)


def test_balance_weight_is_the_gradient_norm_ratio_at_the_layer():
    layer = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    reconstruction = (3 * layer).sum()      # gradient (3, 3), norm 3·√2
    adversarial = (layer ** 2).sum()        # gradient (2, 4), norm √20
    expected = (3 * 2 ** 0.5) / (20 ** 0.5 + 1e-4)
    assert balance_weight(reconstruction, adversarial, layer).item() == pytest.approx(expected, rel=1e-5)


def test_critic_scores_an_8x8_grid_per_image():
    assert PatchCritic()(torch.rand(2, 3, 32, 32)).shape == (2, 1, 8, 8)


def test_vae_gan_training_is_deterministic_and_changes_the_decoder():
    images = (np.random.default_rng(0).random((32, 32, 32, 3)) * 255).astype(np.uint8)

    def train():
        torch.manual_seed(0)
        model = ConvVAE(latent_dim=8, base_channels=4)
        before = [p.clone() for p in model.decoder.parameters()]
        config = GeneratorTrainingConfig(epochs=2, batch_size=16, lr=1e-3, beta_kl=0.1, seed=3, adversarial_weight=0.5,
                                         adversarial_start_epoch=1)
        history = train_generator(model, images, config, device=torch.device("cpu")).loss
        return model, before, history

    model, before, history = train()
    again, _, history_again = train()
    assert len(history) == 2 and all(np.isfinite(history))
    assert history == history_again
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(b, a) for b, a in zip(before, model.decoder.parameters()))
    assert not any(p.requires_grad for p in model.parameters()), "the trained generator is returned frozen"
