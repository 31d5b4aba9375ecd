"""A user's pretrained generator (e.g. StyleGAN2-ADA or StyleGAN-XL, the paper's ``cifar10.pkl``) behind the
interface DMR uses, through a Python entry point the user writes.

``generator.kind: external`` with ``generator.entry_point: package.module:function`` and ``generator.options``
(keyword arguments for it). The function loads the generator with the user's own code (this project never
unpickles a user's file itself) and returns a mapping (or an object with these attributes):

- ``decoder(w) -> images``: N×3×S×S float in [0, 1], S = data.image_size (required);
- ``mapping(z, c) -> w`` with ``z_dim``: the class-conditional mapping network, z ~ N(0, I), c the class indices
  (the sampled route; StyleGAN's ``G.mapping`` with c one-hot);
- ``encoder(images) -> w``: images N×3×S×S in [0, 1] (the encoded route; e.g. a GAN-inversion encoder);
- ``image_size``: S, the side of the images ``decoder`` returns (optional: declared, a generator for another size
  is refused before anything is decoded; either way a few probe latents are decoded and their size checked);
- ``modules``: nn.Modules to move to the run's device with the generator (optional).

At least one of ``mapping`` and ``encoder`` must be given. w may have any shape per sample (StyleGAN's w is
num_ws × w_dim); every latent of one generator has the same shape.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def resolve_entry_point(spec: str) -> Callable[..., Any]:
    """The function named ``package.module:function``, imported; one-line errors for a bad name or import."""
    if not ENTRY_POINT.match(spec):
        raise CheckpointError(f"generator.entry_point = {spec!r} is not of the form package.module:function")
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may fail in any way while importing
        raise CheckpointError(f"generator.entry_point = {spec!r}: importing {module_name} failed "
                              f"({type(err).__name__}: {err}); is the module on the Python path?") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CheckpointError(f"generator.entry_point = {spec!r}: {module_name} has no function {function_name}")
    return function


class ExternalGenerator(nn.Module):
    """The parts an entry point returned, as a generator of this project (``encode`` / ``sample`` / ``decode``)."""

    def __init__(self, parts: Mapping[str, Any] | Any, entry_point: str, image_size: int = 32) -> None:
        super().__init__()
        get = parts.get if isinstance(parts, Mapping) else lambda name: getattr(parts, name, None)
        self.entry_point = entry_point
        self._decoder, self._mapping, self._encoder = get("decoder"), get("mapping"), get("encoder")
        problem = None
        if not callable(self._decoder):
            problem = "no callable decoder(w) -> images"
        elif self._mapping is None and self._encoder is None:
            problem = "neither mapping(z, c) nor encoder(images): DMR has no way to get latents"
        elif self._mapping is not None and not (isinstance(get("z_dim"), int) and get("z_dim") > 0):
            problem = "a mapping without z_dim (the size of z ~ N(0, I)), a positive integer"
        elif get("image_size") is not None and not (isinstance(get("image_size"), int) and get("image_size") > 0):
            problem = f"image_size = {get('image_size')!r}; it must be the side of the decoded images in pixels"
        if problem:
            raise CheckpointError(f"generator.entry_point = {entry_point!r} returned {problem}; see the README, "
                                  "\"Plugging in a pretrained generator\"")
        self.conditional = self._mapping is not None
        self.can_encode = self._encoder is not None
        self.z_dim = get("z_dim")
        self.declared_image_size = get("image_size")
        self.image_size = image_size  # the side it is to decode; load_external_generator checks it does
        self.parts = nn.ModuleList(list(get("modules") or []))

    def encode(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        if self._encoder is None:
            raise CheckpointError(f"generator.entry_point = {self.entry_point!r} gives no encoder: use "
                                  "latents.route: sampled")
        return self._encoder(images)

    def sample(self, z: Tensor, labels: Tensor) -> Tensor:
        return self._mapping(z, labels)

    def decode(self, latents: Tensor) -> Tensor:
        return self._decoder(latents)


def load_external_generator(entry_point: str, options: Mapping[str, Any] | None = None,
                            image_size: int = 32) -> ExternalGenerator:
    """Call the user's entry point with ``options`` and wrap what it returns, in eval mode, after checking that it
    makes images of the data's ``image_size`` (data.image_size): the size it declares, then that of a few probe
    decodings, so a generator for another size is refused in one line before a stage does any work with it."""
    function = resolve_entry_point(entry_point)
    try:
        parts = function(**dict(options or {}))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"generator.entry_point = {entry_point!r} failed ({type(err).__name__}: {err})") from None
    model = ExternalGenerator(parts, entry_point, image_size).eval().requires_grad_(False)
    declared = model.declared_image_size
    if declared is not None and declared != image_size:
        raise size_refusal(entry_point, f"declares image_size {declared}", declared, image_size)
    images = probe_images(model, image_size, count=PROBE_COUNT)
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[2] == images.shape[3] != image_size:
        raise size_refusal(entry_point, f"decodes {images.shape[2]}×{images.shape[3]} images", images.shape[2],
                           image_size)
    check_probe_shape(model, images, PROBE_COUNT)
    return model


def size_refusal(entry_point: str, claim: str, made: int, image_size: int) -> CheckpointError:
    """The one-line refusal of a generator that ``claim``s images of side ``made`` for data of ``image_size``."""
    return CheckpointError(f"generator.entry_point = {entry_point!r} {claim} but the data are "
                           f"{image_size}×{image_size} (data.image_size); set data.image_size: {made} or give a "
                           f"generator for {image_size} px")


PROBE_COUNT = 4  # latents decoded to check and fingerprint a generator: a few, as the user's may be slow on a CPU


def probe_images(model: ExternalGenerator, image_size: int, seed: int = 0, count: int = PROBE_COUNT) -> Tensor:
    """What the generator decodes for ``count`` fixed latents, as float, unclamped: M(z, c) for z drawn from
    ``seed`` and classes 0, 1, 0, …, or, without a mapping, E of random ``image_size``-px images. A failure of the
    user's code is one line that names the size, as an encoder built for another size fails in its own way."""
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.inference_mode():
            if model.conditional:
                latents = model.sample(torch.randn(count, model.z_dim, generator=generator), torch.arange(count) % 2)
            else:
                latents = model.encode(torch.rand(count, 3, image_size, image_size, generator=generator))
            return model.decode(latents).float()
    except Exception as err:
        raise CheckpointError(f"generator.entry_point = {model.entry_point!r}: decoding {count} probe latents failed "
                              f"({type(err).__name__}: {err}); is it a generator for {image_size}×{image_size} "
                              "images (data.image_size)?") from None


def check_probe_shape(model: ExternalGenerator, images: Tensor, count: int) -> None:
    """A one-line refusal unless the probe decoded ``count`` images 3×S×S, S the generator's image size."""
    size = model.image_size
    if images.shape != (count, 3, size, size):
        raise CheckpointError(f"generator.entry_point = {model.entry_point!r}: decoder returned shape "
                              f"{tuple(images.shape)} for {count} latents; DMR needs N×3×{size}×{size} in [0, 1]")


def probe_fingerprint(model: ExternalGenerator, seed: int = 0, count: int = PROBE_COUNT) -> str:
    """A hash of what the generator decodes for a few fixed latents: stored in the stage's checkpoint, so that
    DVC re-runs what follows only when the user's generator decodes differently."""
    images = probe_images(model, model.image_size, seed, count)
    check_probe_shape(model, images, count)
    return hashlib.sha256(images.clamp(0, 1).mul(255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
