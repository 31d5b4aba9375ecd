"""The generator pair (E, G) whose latent space DMR mixes in.

Any generator works if it offers ``encode(images) -> w`` and ``decode(w) -> images`` with images in
[0, 1] (N×3×32×32). The paper uses StyleGAN-XL with a trained encoder; the CPU-sized default here is a
convolutional VAE whose latent is the posterior mean, w = E(x) = μ_φ(x).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from tqdm import tqdm

from ..device import autocast, batch_loader, resolve_device
from ..errors import CheckpointError
from ..images import to_float_images, to_uint8_images
from .checkpoints import load_checkpoint, load_state_dict_checked, save_checkpoint


@runtime_checkable
class Generator(Protocol):
    """What DMR needs of a generator: a latent for every image and an image for every latent."""

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


class ConvVAE(nn.Module):
    """A small convolutional VAE for 32×32 RGB: three stride-2 convolutions down to 4×4, and back."""

    def __init__(self, latent_dim: int = 128, base_channels: int = 32) -> None:
        super().__init__()
        c = base_channels
        self.config = {"latent_dim": latent_dim, "base_channels": base_channels}
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(4 * c * 16, latent_dim)
        self.to_logvar = nn.Linear(4 * c * 16, latent_dim)
        self.from_latent = nn.Linear(latent_dim, 4 * c * 16)
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (4 * c, 4, 4)), nn.BatchNorm2d(4 * c), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Sigmoid(),
        )

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(images * 2 - 1)
        return self.to_mu(h), self.to_logvar(h).clamp(-12, 8)

    def encode(self, images: Tensor) -> Tensor:
        """w = posterior mean."""
        return self.posterior(images)[0]

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(self.from_latent(latents))

    def elbo_terms(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(G(w) for one posterior sample w ~ q(w|x), summed squared error per image, KL(q(w|x) ‖ N(0, I)) per image)."""
        mu, logvar = self.posterior(images)
        w = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        reconstructions = self.decode(w)
        squared_error = nnf.mse_loss(reconstructions.float(), images, reduction="sum") / len(images)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(images)
        return reconstructions, squared_error, kl


class SpatialConvVAE(ConvVAE):
    """:class:`ConvVAE` with a spatial latent: ``latent_dim / 16`` channels on the 4×4 grid instead of one vector.

    Each latent coordinate then belongs to one region of the image, so class-mean subtraction and mixing
    (eqs. 5–7) act per region. The latent is stored flattened (channel-major), so every later stage is unchanged.
    """

    GRID = 4

    def __init__(self, latent_dim: int = 256, base_channels: int = 32) -> None:
        cells = self.GRID * self.GRID
        if latent_dim % cells:
            raise ValueError(f"spatial_vae needs latent_dim divisible by {cells} (channels on a 4×4 grid); "
                             f"got {latent_dim}")
        super().__init__(latent_dim, base_channels)
        c, z = 4 * base_channels, latent_dim // cells
        grid = (self.GRID, self.GRID)
        self.to_mu = nn.Sequential(nn.Unflatten(1, (c,) + grid), nn.Conv2d(c, z, 3, padding=1), nn.Flatten())
        self.to_logvar = nn.Sequential(nn.Unflatten(1, (c,) + grid), nn.Conv2d(c, z, 3, padding=1), nn.Flatten())
        self.from_latent = nn.Sequential(nn.Unflatten(1, (z,) + grid), nn.Conv2d(z, c, 3, padding=1), nn.Flatten())


class AdaptiveInstanceNorm(nn.Module):
    """AdaIN (Huang & Belongie 2017; StyleGAN, Karras et al. 2019, eq. 1): instance-normalise each feature map,
    then scale and shift it by a learned affine map of the style vector."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.to_scale_shift = nn.Linear(style_dim, 2 * channels)

    def forward(self, features: Tensor, style: Tensor) -> Tensor:
        scale, shift = self.to_scale_shift(style)[:, :, None, None].chunk(2, dim=1)
        return self.norm(features) * (1 + scale) + shift


class StyleDecoder(nn.Module):
    """A small style-based decoder: the latent w also passes a mapping network (an MLP, as in StyleGAN) whose
    output modulates every decoder layer through :class:`AdaptiveInstanceNorm`, so global image statistics
    (contrast, colour, texture energy) are set per layer rather than only through the 4×4 input."""

    def __init__(self, latent_dim: int, base_channels: int, style_dim: int = 256) -> None:
        super().__init__()
        c = base_channels
        self.mapping = nn.Sequential(nn.Linear(latent_dim, style_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2))
        self.from_latent = nn.Linear(latent_dim, 4 * c * 16)
        self.layers = nn.ModuleList([
            nn.Conv2d(4 * c, 4 * c, 3, padding=1),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
        ])
        self.styles = nn.ModuleList([AdaptiveInstanceNorm(4 * c, style_dim), AdaptiveInstanceNorm(2 * c, style_dim),
                                     AdaptiveInstanceNorm(c, style_dim)])
        self.to_rgb = nn.ConvTranspose2d(c, 3, 4, 2, 1)
        self.base_channels = c

    def forward(self, latents: Tensor) -> Tensor:
        style = self.mapping(latents)
        x = self.from_latent(latents).unflatten(1, (4 * self.base_channels, 4, 4))
        for layer, modulate in zip(self.layers, self.styles):
            x = nnf.relu(modulate(layer(x), style))
        return torch.sigmoid(self.to_rgb(x))


class StyleConvVAE(ConvVAE):
    """:class:`ConvVAE` with the style-modulated :class:`StyleDecoder` as G; the encoder and latent are unchanged."""

    def __init__(self, latent_dim: int = 128, base_channels: int = 32) -> None:
        super().__init__(latent_dim, base_channels)
        del self.from_latent
        self.decoder = StyleDecoder(latent_dim, base_channels)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


GENERATOR_KINDS = {"conv_vae": ConvVAE, "spatial_vae": SpatialConvVAE, "style_vae": StyleConvVAE}


def build_generator(kind: str, **config) -> nn.Module:
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; choose from {sorted(GENERATOR_KINDS)}")
    return GENERATOR_KINDS[kind](**config)


def encode_images(model: Generator, images: np.ndarray, batch_size: int = 512,
                  device: torch.device | None = None) -> np.ndarray:
    """w = E(x) for uint8 N×32×32×3 images, as float32."""
    device = device or resolve_device()
    model.to(device)  # outside inference mode, so a model still in training keeps trainable weights
    loader = batch_loader(torch.from_numpy(images), batch_size=batch_size)
    with torch.inference_mode(), autocast(device):
        out = [model.encode(to_float_images(x.to(device))).float().cpu()
               for (x,) in tqdm(loader, desc="encode", leave=False)]
    return torch.cat(out).numpy()


@torch.inference_mode()
def decode_latents(model: Generator, latents: Tensor) -> Tensor:
    """G(w) as float images in [0, 1], on the device of ``model``."""
    device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
    with autocast(device):
        return model.decode(latents.to(device).float()).float().clamp(0, 1)


def save_generator(model: nn.Module, kind: str, path, extra: dict | None = None) -> None:
    save_checkpoint({"kind": kind, "config": model.config, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_generator(path) -> nn.Module:
    """Load a generator saved by the generator stage, in eval mode."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or not {"kind", "config", "state_dict"} <= set(payload):
        raise CheckpointError(f"{path} is not a generator checkpoint of this project (no kind/config/state_dict)")
    model = build_generator(payload["kind"], **payload["config"])
    load_state_dict_checked(model, payload["state_dict"], str(path))
    return model.eval().requires_grad_(False)


def decode_to_images(model: Generator, latents: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """G(w) for many latents, batched, as uint8 N×32×32×3."""
    model.to(resolve_device())
    out = np.empty((len(latents), 32, 32, 3), np.uint8)
    for start in tqdm(range(0, len(latents), batch_size), desc="decode", leave=False):
        batch = torch.from_numpy(latents[start:start + batch_size])
        out[start:start + len(batch)] = to_uint8_images(decode_latents(model, batch))
    return out


def reconstruct(model: Generator, images: np.ndarray) -> np.ndarray:
    """G(E(x)) of uint8 images, as uint8; the latents are decoded in one batch."""
    return to_uint8_images(decode_latents(model, torch.from_numpy(encode_images(model, images))))
