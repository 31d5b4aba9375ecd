"""The generators whose latent space DMR mixes in.

Any generator works if it offers ``decode(w) -> images`` with images in [0, 1] (N×3×S×S, S = data.image_size)
and a way to get latents of the ID classes: ``encode(images, labels) -> w`` (the encoded route: w = E(x)) or, for a
class-conditional generator (``conditional = True``), ``sample(z, labels) -> w``, its mapping network
w = M(z, c) with z ~ N(0, I) of ``z_dim`` coordinates (the sampled route, as the authors ran DMR with a
class-conditional StyleGAN-XL). The CPU-sized default is a convolutional VAE whose latent is the posterior mean,
w = E(x) = μ_φ(x); :class:`ConditionalStyleVAE` adds a class-conditional mapping network, so both routes run on
one generator; ``external_generator`` wraps a user's pretrained one.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from tqdm import tqdm

from ..data.streams import row_batches
from ..device import autocast, batch_loader, resolve_device
from ..errors import CheckpointError
from ..images import downsampling_ladder, to_float_images, to_uint8_images
from .checkpoints import load_checkpoint, load_state_dict_checked, save_checkpoint
from .external_generator import load_external_generator


@runtime_checkable
class Generator(Protocol):
    """What DMR needs of a generator: a latent for every image (or, if ``conditional``, for every class through
    ``sample``) and an image for every latent."""

    conditional: bool
    can_encode: bool

    def encode(self, images: Tensor, labels: Tensor | None = None) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


def ladder_widths(image_size: int, base_channels: int) -> tuple[list[int], int]:
    """(the channels after each stride-2 convolution from ``image_size`` px down, the last grid's side g).

    The three stages of the 32-px nets (c, 2c, 4c) end every ladder, so a 32-px net is the one it always was; a
    larger image gets its extra halvings as c-channel stages at the high-resolution end: a convolution's cost is
    its grid's area times its channels, so the narrowest width goes where the grid is largest."""
    halvings, grid = downsampling_ladder(image_size)
    c = base_channels
    return [c] * (halvings - 3) + [c, 2 * c, 4 * c], grid


class ConvVAE(nn.Module):
    """A small convolutional VAE for S×S RGB: stride-2 convolutions down to a g×g grid (S = g·2ⁿ, see
    :func:`~dmr_core.images.downsampling_ladder`; 32 px: three down to 4×4), a linear latent, and back."""

    conditional = False  # its latent is the posterior's; no mapping network to sample per class
    can_encode = True

    def __init__(self, latent_dim: int = 128, base_channels: int = 32, *, image_size: int = 32) -> None:
        super().__init__()
        widths, g = ladder_widths(image_size, base_channels)
        top = widths[-1]
        self.config = {"latent_dim": latent_dim, "base_channels": base_channels, "image_size": image_size}
        self.image_size = image_size
        down = [3] + widths
        self.encoder = nn.Sequential(
            *[m for i, o in zip(down, down[1:]) for m in (nn.Conv2d(i, o, 4, 2, 1), nn.BatchNorm2d(o),
                                                          nn.LeakyReLU(0.2))],
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(top * g * g, latent_dim)
        self.to_logvar = nn.Linear(top * g * g, latent_dim)
        self.from_latent = nn.Linear(latent_dim, top * g * g)
        up = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (top, g, g)), nn.BatchNorm2d(top), nn.ReLU(),
            *[m for i, o in zip(up, up[1:]) for m in (nn.ConvTranspose2d(i, o, 4, 2, 1), nn.BatchNorm2d(o), nn.ReLU())],
            nn.ConvTranspose2d(up[-1], 3, 4, 2, 1), nn.Sigmoid(),
        )

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(images * 2 - 1)
        return self.to_mu(h), self.to_logvar(h).clamp(-12, 8)

    def encode(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """w = posterior mean (``labels`` are not used: the latent holds the class)."""
        return self.posterior(images)[0]

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(self.from_latent(latents))

    def latent_of(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """The latent G decodes for a posterior sample z: z itself (a conditional VAE maps it through M)."""
        return z

    def elbo_terms(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(G(w) for one posterior sample z ~ q(z|x), summed squared error per image, KL(q(z|x) ‖ N(0, I)) per image),
        with w = z (w = M(z, y) for a conditional VAE)."""
        mu, logvar = self.posterior(images)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        reconstructions = self.decode(self.latent_of(z, labels))
        squared_error = nnf.mse_loss(reconstructions.float(), images, reduction="sum") / len(images)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(images)
        return reconstructions, squared_error, kl


def spatial_grid_cells(image_size: int) -> int:
    """g², the cells of the g×g grid :class:`SpatialConvVAE` keeps its latent on at ``image_size`` px (16 at 32 px):
    its latent_dim must be a multiple of it, which params validation checks before anything trains."""
    _, grid = downsampling_ladder(image_size)
    return grid * grid


class SpatialConvVAE(ConvVAE):
    """:class:`ConvVAE` with a spatial latent: ``latent_dim / g²`` channels on the encoder's last g×g grid (4×4 at
    32 px) instead of one vector.

    Each latent coordinate then belongs to one region of the image, so class-mean subtraction and mixing
    (eqs. 5–7) act per region. The latent is stored flattened (channel-major), so every later stage is unchanged.
    """

    def __init__(self, latent_dim: int = 256, base_channels: int = 32, *, image_size: int = 32) -> None:
        _, side = downsampling_ladder(image_size)
        cells = spatial_grid_cells(image_size)
        if latent_dim % cells:
            raise ValueError(f"spatial_vae at {image_size} px needs latent_dim divisible by {cells} (channels on its "
                             f"{side}×{side} grid); got {latent_dim}")
        super().__init__(latent_dim, base_channels, image_size=image_size)
        c, z = 4 * base_channels, latent_dim // cells
        grid = (side, side)
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


def mapping_mlp(in_dim: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """StyleGAN's mapping network (Karras et al. 2019, §2): fully connected layers with leaky ReLU (slope 0.2)."""
    dims = [in_dim] + [out_dim] * layers
    return nn.Sequential(*[m for i in range(layers) for m in (nn.Linear(dims[i], dims[i + 1]), nn.LeakyReLU(0.2))])


class StyleDecoder(nn.Module):
    """A small style-based decoder: the latent w also passes a mapping network (an MLP, as in StyleGAN) whose
    output modulates every decoder layer through :class:`AdaptiveInstanceNorm`, so global image statistics
    (contrast, colour, texture energy) are set per layer rather than only through the g×g input.

    Its layers mirror :class:`ConvVAE`'s encoder: a 3×3 convolution at the g×g grid, then n − 1 stride-2
    transposed convolutions, each with its AdaIN, and a last one to RGB (n halvings of ``image_size``)."""

    def __init__(self, latent_dim: int, base_channels: int, style_dim: int = 256, *, image_size: int = 32) -> None:
        super().__init__()
        widths, g = ladder_widths(image_size, base_channels)
        up = widths[::-1]
        self.mapping = mapping_mlp(latent_dim, style_dim)
        self.from_latent = nn.Linear(latent_dim, up[0] * g * g)
        self.layers = nn.ModuleList([nn.Conv2d(up[0], up[0], 3, padding=1)]
                                    + [nn.ConvTranspose2d(i, o, 4, 2, 1) for i, o in zip(up, up[1:])])
        self.styles = nn.ModuleList([AdaptiveInstanceNorm(w, style_dim) for w in up])
        self.to_rgb = nn.ConvTranspose2d(up[-1], 3, 4, 2, 1)
        self.grid = (up[0], g, g)

    def forward(self, latents: Tensor) -> Tensor:
        style = self.mapping(latents)
        x = self.from_latent(latents).unflatten(1, self.grid)
        for layer, modulate in zip(self.layers, self.styles):
            x = nnf.relu(modulate(layer(x), style))
        return torch.sigmoid(self.to_rgb(x))


def unit_second_moment(x: Tensor) -> Tensor:
    """x / sqrt(mean(x²)) per row: StyleGAN's normalisation of z (and of the class embedding) before mapping."""
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class ClassConditionalMapping(nn.Module):
    """w = M(z, c): StyleGAN's mapping network made class-conditional as StyleGAN2-ADA and StyleGAN-XL do it
    (Karras et al. 2020, appendix B): a learned embedding of the class c is concatenated to z, each normalised to
    unit second moment, and the pair passes the MLP. The class mean the DMR marginal subtracts is then M's
    per-class average E_z[M(z, c)], StyleGAN's ``w_avg`` per class."""

    def __init__(self, z_dim: int, num_classes: int, w_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, z_dim)
        self.mlp = mapping_mlp(2 * z_dim, w_dim)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        return self.mlp(torch.cat([unit_second_moment(z), unit_second_moment(self.embed(labels))], dim=1))


class StyleConvVAE(ConvVAE):
    """:class:`ConvVAE` with the style-modulated :class:`StyleDecoder` as G; the encoder and latent are unchanged."""

    def __init__(self, latent_dim: int = 128, base_channels: int = 32, *, image_size: int = 32) -> None:
        super().__init__(latent_dim, base_channels, image_size=image_size)
        del self.from_latent
        self.decoder = StyleDecoder(latent_dim, base_channels, image_size=image_size)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


class ConditionalStyleVAE(ConvVAE):
    """A class-conditional VAE with a mapping network: q(z|x) as :class:`ConvVAE`'s encoder, w = M(z, y)
    (:class:`ClassConditionalMapping`), G(w) the :class:`StyleDecoder`; trained on the negative ELBO with the true
    class y. Its latents can be had both ways DMR needs: encoded, w = M(μ_φ(x), y), or sampled, w = M(z, c) with
    z ~ N(0, I) (the authors' route with StyleGAN-XL, where no encoder exists)."""

    conditional = True

    def __init__(self, latent_dim: int = 128, base_channels: int = 32, num_classes: int = 10, *,
                 image_size: int = 32) -> None:
        super().__init__(latent_dim, base_channels, image_size=image_size)
        del self.from_latent
        self.config = {"latent_dim": latent_dim, "base_channels": base_channels, "num_classes": num_classes,
                       "image_size": image_size}
        self.z_dim = latent_dim
        self.mapping = ClassConditionalMapping(latent_dim, num_classes, latent_dim)
        self.decoder = StyleDecoder(latent_dim, base_channels, image_size=image_size)

    def encode(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """w = M(μ_φ(x), y): the encoded route needs each image's class."""
        if labels is None:
            raise ValueError("a class-conditional generator encodes an image with its class: pass labels")
        return self.mapping(self.posterior(images)[0], labels)

    def sample(self, z: Tensor, labels: Tensor) -> Tensor:
        """w = M(z, c)."""
        return self.mapping(z, labels)

    def latent_of(self, z: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError("a class-conditional generator trains with each image's class: pass labels")
        return self.mapping(z, labels)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


# the kinds trained by stage generator; ``external`` (a user's pretrained generator) is loaded, not trained
GENERATOR_KINDS = {"conv_vae": ConvVAE, "spatial_vae": SpatialConvVAE, "style_vae": StyleConvVAE,
                   "cond_style_vae": ConditionalStyleVAE}
EXTERNAL_KIND = "external"


def build_generator(kind: str, **config) -> nn.Module:
    """The generator of a trained ``kind``, built from ``config`` (its class's keywords); a config without
    ``image_size``, as in a checkpoint from before sizes varied, builds it for 32 px."""
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; choose from {sorted(GENERATOR_KINDS)}")
    return GENERATOR_KINDS[kind](**config)


def model_device(model: Generator) -> torch.device:
    """Where ``model``'s weights are (the CPU for a generator without parameters of its own)."""
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return torch.device("cpu")


def encode_images(model: Generator, images: Any, batch_size: int = 512,
                  device: torch.device | None = None, labels: np.ndarray | None = None) -> np.ndarray:
    """w = E(x) for uint8 N×S×S×3 images (S the generator's image size; an array or a stored set, read a batch
    at a time), as float32; ``labels`` (the images' classes) are passed to a class-conditional generator, whose
    latent depends on the class (w = M(E(x), y))."""
    device = device or resolve_device()
    model.to(device)  # outside inference mode, so a model still in training keeps trainable weights
    conditional = getattr(model, "conditional", False)
    if conditional and labels is None:
        raise ValueError("a class-conditional generator encodes images with their classes: pass labels")
    classes = torch.from_numpy(np.asarray(labels).astype(np.int64)) if conditional else None
    out = []
    with torch.inference_mode(), autocast(device):
        for start, batch in tqdm(row_batches(images, batch_size), desc="encode", leave=False,
                                 total=-(-len(images) // batch_size), disable=len(images) <= batch_size):
            extra = () if classes is None else (classes[start:start + len(batch)].to(device),)
            out.append(model.encode(to_float_images(torch.from_numpy(batch).to(device)), *extra).float().cpu())
    return torch.cat(out).numpy()


def sample_class_latents(model: Generator, counts: np.ndarray, seed: int, batch_size: int = 512,
                         device: torch.device | None = None, rows: range | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The sampled route: ``counts[c]`` latents w = M(z, c), z ~ N(0, I), for each class c; returns (w as float32,
    their classes). z is drawn on the CPU from ``seed`` in class order, so the result does not depend on the
    device or the batch size. ``rows``: map only these rows of the whole draw (a rank's share; z is drawn for
    every row, so each row is the one of the whole set)."""
    if not getattr(model, "conditional", False):
        raise ValueError(f"{type(model).__name__} has no class-conditional mapping network to sample latents from")
    device = device or resolve_device()
    model.to(device)
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    z = torch.randn(len(labels), model.z_dim, generator=torch.Generator().manual_seed(seed))
    if rows is not None:
        window = slice(rows.start, rows.stop)
        z, labels = z[window], labels[window]
    loader = batch_loader(z, torch.from_numpy(labels), batch_size=batch_size)
    with torch.inference_mode(), autocast(device):
        out = [model.sample(z_batch.to(device), y.to(device)).float().cpu()
               for z_batch, y in tqdm(loader, desc="sample M(z, c)", leave=False)]
    return torch.cat(out).numpy(), labels


@torch.inference_mode()
def decode_latents(model: Generator, latents: Tensor) -> Tensor:
    """G(w) as float images in [0, 1], on the device of ``model``."""
    device = model_device(model)
    with autocast(device):
        return model.decode(latents.to(device).float()).float().clamp(0, 1)


def save_generator(model: nn.Module, kind: str, path, extra: dict | None = None, config: dict | None = None) -> None:
    """Its kind, config and weights; an external generator's weights stay the user's (only its config is kept)."""
    state = {} if kind == EXTERNAL_KIND else model.state_dict()
    save_checkpoint({"kind": kind, "config": model.config if config is None else config, "state_dict": state,
                     **(extra or {})}, path)


def load_generator(path) -> nn.Module:
    """Load a generator saved by the generator stage, in eval mode; an ``external`` one is rebuilt by its entry
    point (its checkpoint holds only the entry point and its options)."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or not {"kind", "config", "state_dict"} <= set(payload):
        raise CheckpointError(f"{path} is not a generator checkpoint of this project (no kind/config/state_dict)")
    if payload["kind"] == EXTERNAL_KIND:
        return load_external_generator(**payload["config"])
    model = build_generator(payload["kind"], **payload["config"])
    load_state_dict_checked(model, payload["state_dict"], str(path))
    return model.eval().requires_grad_(False)


def decode_to_images(model: Generator, latents: np.ndarray, batch_size: int = 512,
                     image_size: int | None = None) -> np.ndarray:
    """G(w) for many latents, batched, as uint8 N×S×S×3: S is ``image_size``, else the generator's own
    (``model.image_size``; 32 for a generator that does not say, as every one did before sizes varied)."""
    size = image_size if image_size is not None else getattr(model, "image_size", 32)
    model.to(resolve_device())
    out = np.empty((len(latents), size, size, 3), np.uint8)
    for start in tqdm(range(0, len(latents), batch_size), desc="decode", leave=False,
                      disable=len(latents) <= batch_size):
        batch = torch.from_numpy(latents[start:start + batch_size])
        decoded = decode_latents(model, batch)
        if decoded.shape != (len(batch), 3, size, size):
            raise CheckpointError(f"the generator decoded {len(batch)} latents to a tensor of shape "
                                  f"{tuple(decoded.shape)}; DMR needs images N×3×{size}×{size} in [0, 1]")
        out[start:start + len(batch)] = to_uint8_images(decoded)
    return out


def reconstruction_summary(model: Generator, images: Any, labels: np.ndarray | None = None,
                           show: np.ndarray | None = None, batch_size: int = 512) -> tuple[float, float, np.ndarray]:
    """(mean squared error on [0, 1] pixels, PSNR in dB, G(E(x)) of the rows ``show`` as uint8) of uint8 images (an
    array or a stored set) reconstructed a batch at a time (``labels`` for a class-conditional generator)."""
    show = np.zeros(0, np.int64) if show is None else np.asarray(show, np.int64)
    squared, count, shown = 0.0, 0, np.zeros((len(show), *images.shape[1:]), np.uint8)
    for start, batch in row_batches(images, batch_size):
        classes = None if labels is None else np.asarray(labels)[start:start + len(batch)]
        recon = decode_to_images(model, encode_images(model, batch, batch_size, labels=classes), batch_size)
        squared += float(np.sum((recon.astype(np.float64) - batch) ** 2))
        count += batch.size
        inside = (show >= start) & (show < start + len(batch))
        shown[inside] = recon[show[inside] - start]
    mse = squared / max(count, 1) / 255.0**2
    return mse, float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), shown
