"""Training the generator pair (E, G): a VAE on the negative ELBO, optionally with a perceptual term through the
frozen classifier and against a patch critic (VAE-GAN).

The negative ELBO per image is ‖x − G(w)‖² + β·KL(q(w|x) ‖ N(0, I)) for one posterior sample w ~ q(w|x).

DMR's head learns whatever tells G's images from real photographs, and a VAE trained on squared error alone
produces blur: the head then learns "blurry = OOD" (README, "Results of the default run"). Two optional terms
aim at that. The perceptual term (:class:`~dmr_core.training.perceptual.ClassifierPerceptualLoss`) makes G(E(x))
look like x to F. The adversarial term trains the decoder on w·λ·(−D(fake)) against the
:class:`~dmr_core.nets.critic.PatchCritic` D, with the hinge loss of Lim & Ye 2017 for D; fakes are both
reconstructions G(E(x)) and decodings of prior samples G(z), z ~ N(0, I) (Larsen et al. 2016), so the decoder is
pushed toward realistic texture off the data manifold too, where DMR's mixed latents land. λ balances the two
gradients at the decoder's last layer, λ = ‖∇rec‖ / ‖∇adv‖ (Esser et al. 2021, "Taming Transformers", eq. 7), so
``adversarial_weight`` is a relative weight that needs no retuning when the reconstruction term changes scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from ..device import autocast, batch_loader, resolve_device
from ..distributed import average_gradients
from ..images import to_float_images
from ..nets.critic import PatchCritic
from ..nets.external_generator import load_external_generator, probe_fingerprint
from ..nets.generator import EXTERNAL_KIND, GENERATOR_KINDS, ConvVAE, build_generator
from .loop import BatchLoss, History, check_finite, run_epochs, seed_everything


@dataclass(frozen=True)
class GeneratorTrainingConfig:
    """How the generator trains (params.yaml section ``generator``, without the architecture keys)."""

    epochs: int
    batch_size: int
    lr: float
    beta_kl: float
    seed: int
    adversarial_weight: float = 0.0      # > 0: train against a patch critic, relative to the reconstruction gradient
    adversarial_start_epoch: int = 1     # epochs of plain VAE training before the critic joins
    perceptual_weight: float = 0.0       # > 0: add the perceptual term (needs ``perceptual``)
    perceptual_start_epoch: int = 0      # epochs before the perceptual term joins


def vae_loss(model: ConvVAE, images: Tensor, beta_kl: float, perceptual: nn.Module | None = None,
             perceptual_weight: float = 0.0, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(G(w), summed squared error, loss): the negative ELBO per image, squared error + β·KL(q(z|x) ‖ N(0, I)),
    plus ``perceptual_weight · perceptual(G(w), x)`` when ``perceptual`` is given; ``labels`` for a
    class-conditional VAE (w = M(z, y))."""
    reconstructions, squared_error, kl = model.elbo_terms(images, labels)
    loss = squared_error + beta_kl * kl
    if perceptual is not None:
        loss = loss + perceptual_weight * perceptual(reconstructions, images)
    return reconstructions, squared_error, loss


def critic_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))]."""
    return nnf.relu(1 - real_logits).mean() + nnf.relu(1 + fake_logits).mean()


def balance_weight(reconstruction: Tensor, adversarial: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """λ = ‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4) at the decoder's last layer L, detached and clipped."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, max_weight).detach()


def train_generator(
    model: ConvVAE, images: np.ndarray, config: GeneratorTrainingConfig, perceptual: nn.Module | None = None,
    device: torch.device | None = None, labels: np.ndarray | None = None,
) -> History:
    """Adam on the negative ELBO with random horizontal flips; returns the mean VAE loss per epoch (with the
    perceptual term where it applies, never the adversarial one). The images stay resident on ``device``
    (default: ``resolve_device()``).

    ``perceptual``: a loss of (reconstructions, images) used from epoch ``perceptual_start_epoch`` (0-based) on
    when ``perceptual_weight`` > 0. With ``adversarial_weight`` > 0 the first ``adversarial_start_epoch`` epochs
    train the VAE alone (the critic has nothing to judge while the decoder outputs noise); then the decoder and
    the critic alternate one step each, both with Adam(0.5, 0.9). A class-conditional VAE trains with the
    images' ``labels``; its prior samples for the critic are M(z, y) with the batch's classes."""
    c = config
    device = device or resolve_device()
    rng = seed_everything(c.seed)
    model.to(device).train()
    use_perceptual = perceptual is not None and c.perceptual_weight > 0
    if c.perceptual_weight > 0 and perceptual is None:
        raise ValueError("perceptual_weight > 0 needs the perceptual loss (the frozen classifier it measures through)")
    if use_perceptual:
        perceptual.to(device)
    critic = PatchCritic().to(device).train() if c.adversarial_weight > 0 else None
    tensors = [torch.from_numpy(images).to(device)]
    if model.conditional:
        if labels is None:
            raise ValueError("a class-conditional generator trains with the images' classes: pass labels")
        tensors.append(torch.from_numpy(np.asarray(labels).astype(np.int64)).to(device))
    loader = batch_loader(*tensors, batch_size=c.batch_size, shuffle=True, rng=rng,
                          drop_last=len(images) > c.batch_size)
    if critic is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=c.lr, betas=(0.5, 0.9))
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=c.lr, betas=(0.5, 0.9))
        last_layer = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1].weight
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, c.epochs * len(loader)))
    judged: dict[str, Tensor] = {}  # this step's real and fake images, for the critic's step after the decoder's

    def batch_loss(batch, epoch: int) -> BatchLoss:
        x, *y = batch
        y = y[0] if y else None
        x = to_float_images(x)
        flip = (torch.rand(len(x), generator=rng) < 0.5).to(device)
        x[flip] = x[flip].flip(3)
        with autocast(device):
            term = perceptual if use_perceptual and epoch >= c.perceptual_start_epoch else None
            reconstructions, squared_error, loss = vae_loss(model, x, c.beta_kl, term, c.perceptual_weight, y)
            if critic is None or epoch < c.adversarial_start_epoch:
                return BatchLoss(loss, len(x))
            z = torch.randn(len(x), model.config["latent_dim"], generator=rng).to(device)
            prior = model.decode(model.latent_of(z, y))
            fakes = torch.cat([reconstructions, prior])
            critic.requires_grad_(False)
            adversarial = -critic(fakes).float().mean()
            critic.requires_grad_(True)
            judged.update(real=x, fake=fakes.detach())
            weight = c.adversarial_weight * balance_weight(squared_error, adversarial, last_layer)
            return BatchLoss(loss + weight * adversarial, len(x), reported=loss)

    def critic_step(epoch: int, step: int) -> None:
        if not judged:
            return
        real = judged["real"]
        with autocast(device):
            loss = critic_hinge_loss(critic(real).float(), critic(judged.pop("fake")).float())
        judged.clear()
        check_finite(loss, "generator critic", epoch + 1, step)
        critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(list(critic.parameters()), len(real))  # data-parallel: every rank's critic steps alike
        critic_optimizer.step()

    history = run_epochs(loader, batch_loss, optimizer, schedule, epochs=c.epochs, what="generator",
                         after_step=critic_step if critic is not None else None)
    model.eval().requires_grad_(False)
    return history


@dataclass
class PreparedGenerator:
    model: nn.Module
    history: History            # the training loss per epoch (none for an external generator)
    config: dict                # what rebuilds it: the architecture's keys, or an external entry point and options
    extra: dict                 # further fields of its checkpoint


def prepare_generator(
    kind: str, architecture: dict, config: GeneratorTrainingConfig, images: np.ndarray, labels: np.ndarray,
    num_classes: int, perceptual: nn.Module | None = None, entry_point: str | None = None,
    options: dict | None = None,
) -> PreparedGenerator:
    """The generator of ``kind`` for the size of ``images`` (uint8 N×S×S×3): trained on these ID training images
    (a class-conditional kind with their labels), or, for ``external``, the user's pretrained one loaded through
    ``entry_point`` and refused unless it makes S-px images (never trained here; its checkpoint keeps the entry
    point, its options, S and a fingerprint of what it decodes)."""
    image_size = images.shape[1]
    if kind == EXTERNAL_KIND:
        model = load_external_generator(entry_point, options, image_size)
        # 32 px stays implicit (a checkpoint without the key means 32), so a 32-px run's checkpoint is unchanged
        sized = {"image_size": image_size} if image_size != 32 else {}
        return PreparedGenerator(model, History([]), {"entry_point": entry_point, "options": dict(options or {}),
                                                      **sized}, {"probe_sha256": probe_fingerprint(model)})
    seed_everything(config.seed)  # the weight initialisation draws from the global RNG
    conditional = kind in GENERATOR_KINDS and GENERATOR_KINDS[kind].conditional
    model = build_generator(kind, **architecture, **({"num_classes": num_classes} if conditional else {}),
                            image_size=image_size)
    history = train_generator(model, images, config, perceptual, labels=labels if model.conditional else None)
    return PreparedGenerator(model, history, model.config, {})
