"""A user's pretrained generator (e.g. StyleGAN2-ADA or StyleGAN-XL, the paper's ``cifar10.pkl``) behind the
interface DMR uses, through a Python entry point the user writes.

``generator.kind: external`` with ``generator.entry_point: package.module:function`` and ``generator.options``
(keyword arguments for it). The function loads the generator with the user's own code (this project never
unpickles a user's file itself) and returns a mapping (or an object with these attributes):

- ``decoder(w) -> images``: N×3×32×32 float in [0, 1] (required);
- ``mapping(z, c) -> w`` with ``z_dim``: the class-conditional mapping network, z ~ N(0, I), c the class indices
  (the sampled route; StyleGAN's ``G.mapping`` with c one-hot);
- ``encoder(images) -> w``: images N×3×32×32 in [0, 1] (the encoded route; e.g. a GAN-inversion encoder);
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

    def __init__(self, parts: Mapping[str, Any] | Any, entry_point: str) -> None:
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
        if problem:
            raise CheckpointError(f"generator.entry_point = {entry_point!r} returned {problem}; see the README, "
                                  "\"Plugging in a pretrained generator\"")
        self.conditional = self._mapping is not None
        self.can_encode = self._encoder is not None
        self.z_dim = get("z_dim")
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


def load_external_generator(entry_point: str, options: Mapping[str, Any] | None = None) -> ExternalGenerator:
    """Call the user's entry point with ``options`` and wrap what it returns, in eval mode."""
    function = resolve_entry_point(entry_point)
    try:
        parts = function(**dict(options or {}))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"generator.entry_point = {entry_point!r} failed ({type(err).__name__}: {err})") from None
    return ExternalGenerator(parts, entry_point).eval().requires_grad_(False)


def probe_fingerprint(model: ExternalGenerator, seed: int = 0, count: int = 4) -> str:
    """A hash of what the generator decodes for a few fixed latents: stored in the stage's checkpoint, so that
    DVC re-runs what follows only when the user's generator decodes differently."""
    with torch.inference_mode():
        if model.conditional:
            z = torch.randn(count, model.z_dim, generator=torch.Generator().manual_seed(seed))
            latents = model.sample(z, torch.arange(count) % 2)
        else:
            latents = model.encode(torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
        images = model.decode(latents).float()
    if images.shape != (count, 3, 32, 32):
        raise CheckpointError(f"generator.entry_point = {model.entry_point!r}: decoder returned shape "
                              f"{tuple(images.shape)} for {count} latents; DMR needs N×3×32×32 in [0, 1]")
    return hashlib.sha256(images.clamp(0, 1).mul(255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
