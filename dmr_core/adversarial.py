"""Adversarial training of the VAE decoder (VAE-GAN), to make G's images sharp where DMR decodes them.

DMR's head learns whatever tells G's images from real photographs. The paper's StyleGAN-XL produces
photographic texture; a VAE trained on squared error alone produces blur, and the head then learns
"blurry = OOD" (DESIGN.md, "Known pitfall"). Here a patch critic D judges realism, and the decoder
is trained on reconstruction + β·KL + w·λ·(−D(fake)) (the hinge GAN loss of Lim & Ye 2017 with the
spectral-normalised critic of Miyato et al. 2018). Fakes are both reconstructions G(E(x)) and
decodings of prior samples G(z), z ~ N(0, I) (Larsen et al. 2016), so the decoder is pushed toward
realistic texture off the data manifold too, where DMR's mixed latents land. λ balances the two
gradients at the decoder's last layer, λ = ‖∇rec‖ / ‖∇adv‖ (Esser et al. 2021, "Taming
Transformers", eq. 7), so ``adversarial_weight`` is a relative weight that needs no retuning when
the reconstruction term changes scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .device import autocast, batch_loader, resolve_device
from .generator import vae_loss
from .training import check_finite, seed_everything, to_float_images


class PatchCritic(nn.Module):
    """Spectral-normalised convolutional critic for 32×32 RGB: one realism logit per position of an 8×8 grid,
    each seeing an 18×18 patch, so it judges local texture and sharpness rather than what the image shows.
    About half the multiply-adds of the VAE's encoder, to keep adversarial training affordable on a CPU."""

    def __init__(self, base_channels: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        c = base_channels
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, c, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * c, 1, 3, 1, 1)),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2 - 1)


def critic_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))]."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def balance_weight(reconstruction: Tensor, adversarial: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """λ = ‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4) at the decoder's last layer L, detached and clipped."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, max_weight).detach()


def train_vae_gan(
    model: nn.Module, images: np.ndarray, *, epochs: int, batch_size: int, lr: float, beta_kl: float,
    adversarial_weight: float, adversarial_start_epoch: int, seed: int, perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0, perceptual_start_epoch: int = 0, device: torch.device | None = None,
) -> list[float]:
    """Train ``model`` (a VAE with ``elbo_terms``, ``decode``, ``decoder``) against a :class:`PatchCritic`.

    The first ``adversarial_start_epoch`` epochs train the VAE alone (the critic has nothing to judge
    while the decoder outputs noise); then both train, one critic step per decoder step, Adam(0.5, 0.9).
    ``perceptual``/``perceptual_weight``/``perceptual_start_epoch`` add a perceptual term to the VAE loss as in
    :func:`~dmr_core.generator.train_generator`. Returns the mean VAE loss (reconstruction + β·KL, plus the
    perceptual term where it applies, without the adversarial term) per epoch."""
    device = device or resolve_device()
    generator = seed_everything(seed)
    model.to(device).train()
    use_perceptual = perceptual is not None and perceptual_weight > 0
    if use_perceptual:
        perceptual.to(device)
    critic = PatchCritic().to(device).train()
    loader = batch_loader(torch.from_numpy(images).to(device), batch_size=batch_size, shuffle=True,
                          generator=generator, drop_last=len(images) > batch_size)
    opt_vae = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_critic = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt_vae, T_max=max(1, epochs * len(loader)))
    last_layer = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1].weight
    latent_dim = model.config["latent_dim"]
    history = []
    for epoch in range(epochs):
        adversarial = epoch >= adversarial_start_epoch
        total, count = 0.0, 0
        progress = tqdm(loader, desc=f"generator epoch {epoch + 1}/{epochs}" + (" (adversarial)" if adversarial else ""),
                        leave=False)
        for step, (x,) in enumerate(progress):
            x = to_float_images(x)
            flip = (torch.rand(len(x), generator=generator) < 0.5).to(device)
            x[flip] = x[flip].flip(3)
            with autocast(device):
                term = perceptual if use_perceptual and epoch >= perceptual_start_epoch else None
                recon, rec, elbo_loss = vae_loss(model, x, beta_kl, term, perceptual_weight)
                loss = elbo_loss
                if adversarial:
                    prior = model.decode(torch.randn(len(x), latent_dim, generator=generator).to(device))
                    fakes = torch.cat([recon, prior])
                    critic.requires_grad_(False)
                    adv = -critic(fakes).float().mean()
                    critic.requires_grad_(True)
                    loss = elbo_loss + adversarial_weight * balance_weight(rec, adv, last_layer) * adv
            check_finite(loss, "generator", epoch + 1, step)
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            opt_vae.step()
            schedule.step()
            if adversarial:
                with autocast(device):
                    critic_loss = critic_hinge_loss(critic(x).float(), critic(fakes.detach()).float())
                check_finite(critic_loss, "generator critic", epoch + 1, step)
                opt_critic.zero_grad(set_to_none=True)
                critic_loss.backward()
                opt_critic.step()
            total += float(elbo_loss.detach()) * len(x)
            count += len(x)
            progress.set_postfix(loss=f"{total / count:.4g}")
        history.append(total / max(count, 1))
    model.eval().requires_grad_(False)
    return history
