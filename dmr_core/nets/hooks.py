"""Reading a network's intermediate tensors with forward hooks, and finding out statically which modules it has.

Hooks let the pipeline read any module of any architecture (its own CIFAR nets or a torchvision model) without
rewriting that architecture's ``forward``. The hooks live only while one forward pass runs, so a deep copy of
the network (``for_inference``) never carries a hook that writes into another copy's storage, and a
``torch.jit.trace`` of that pass records plain tensor operations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def recording(outputs: dict[str, nn.Module], inputs: dict[str, nn.Module]) -> Iterator[dict[str, Tensor]]:
    """While the block runs, ``found[key]`` is the output of ``outputs[key]`` (or the first input of
    ``inputs[key]``) at its last call. Values are cloned: a later in-place op (torchvision's ``ReLU(inplace=True)``,
    ``out += identity``) would otherwise change what was read."""
    found: dict[str, Tensor] = {}

    def keep_output(key: str):
        def hook(module, args, output):
            found[key] = output.clone()
        return hook

    def keep_input(key: str):
        def hook(module, args):
            found[key] = args[0].clone()
        return hook

    handles = [module.register_forward_hook(keep_output(key)) for key, module in outputs.items()]
    handles += [module.register_forward_pre_hook(keep_input(key)) for key, module in inputs.items()]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class LayerTrace:
    """What one forward pass showed about a network's modules."""

    shapes: dict[str, tuple[int, ...]]  # module name → shape of its tensor output (last call), in finishing order
    before_head: tuple[str, ...]        # the modules of ``shapes`` that finished before the head layer started
    head: str | None                    # the nn.Linear whose output is the network's output, if one is

    def last_spatial_layer(self) -> str | None:
        """The last module to finish before the head whose output still has more than one position (N×C×H×W with
        H·W > 1, or a token sequence N×L×D): the last feature map before the global pooling. Documented as the
        ``features.layer: auto`` rule for torchvision models."""
        spatial = [name for name in self.before_head
                   if len(self.shapes[name]) >= 3 and math.prod(self.shapes[name][2:]) > 1]
        return spatial[-1] if spatial else None


def trace_layers(root: nn.Module, forward: Callable[[], object]) -> LayerTrace:
    """Run ``forward()`` (a pass through ``root``, usually on the meta device) with a hook on every submodule of
    ``root``, and report their output shapes, names relative to ``root``, and which nn.Linear made the output."""
    shapes: dict[str, tuple[int, ...]] = {}
    linear_outputs: dict[str, Tensor] = {}
    started: dict[str, int] = {}
    finished: list[str] = []

    def on_output(name: str, module: nn.Module):
        def hook(mod, args, output):
            if isinstance(output, Tensor):
                shapes.pop(name, None)  # keep finishing order of the last call
                shapes[name] = tuple(output.shape)
                if isinstance(mod, nn.Linear):
                    linear_outputs[name] = output
            finished.append(name)
        return hook

    def on_start(name: str):
        def hook(mod, args):
            started[name] = len(finished)
        return hook

    handles = []
    for name, module in root.named_modules():
        if name:
            handles.append(module.register_forward_hook(on_output(name, module)))
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(on_start(name)))
    try:
        with torch.no_grad():
            out = forward()
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, Tensor):
        out = out[0]  # torchvision's InceptionOutputs / GoogLeNetOutputs: the main logits first
    heads = [name for name, value in linear_outputs.items() if value is out]
    head = heads[-1] if heads else None
    done_before = set(finished[:started[head]]) if head is not None else set(finished)
    return LayerTrace(shapes, tuple(name for name in shapes if name in done_before), head)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer registered in the block is moved to the meta device at once; for constructors
    that compute with tensors (torchvision's RegNet widths), which a global meta device would break."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, tensor, persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with no memory for weights: on the meta device, or, where the constructor itself needs real
    tensors, with each parameter moved to meta as soon as it is registered."""
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:
        with _parameters_on_meta():
            return build()
