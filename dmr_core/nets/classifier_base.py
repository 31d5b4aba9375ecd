"""What every classifier F is to the pipeline, whatever its architecture: images in [0, 1] in, logits out, one
classification layer (the final nn.Linear), and its three representations read with forward hooks.

``feature_map`` is the output of one module, ``feature_layer`` (``features.layer``; by default the last feature
map before the global pooling), ``penultimate`` the input of the classification layer and ``logits`` the output.
Reading them by hook rather than by a second code path means the representations are, by construction, what the
classifier computes when it classifies.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from ..errors import ParamsError
from .hooks import recording

# The normalisation the pretrained CIFAR ResNets were trained with (ImageNet's statistics).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
AUTO_LAYER = "auto"


def _cell_side(side: int, max_grid: int) -> int:
    """The smallest divisor k of ``side`` with side / k ≤ ``max_grid``: cells of k pixels tile the side exactly."""
    return next(k for k in range(1, side + 1) if side % k == 0 and side // k <= max_grid)


def bounded_grid(feature_map: Tensor, max_grid: int) -> Tensor:
    """``feature_map`` (N×C×H×W) average-pooled in equal, non-overlapping cells to at most ``max_grid`` cells a
    side (``features.max_grid``), so the head's input stays bounded at any image size; each cell is the mean of
    k_h×k_w positions, k the smallest divisor of the side that brings it within the bound, so the map's global
    average (the penultimate vector of the pooled layer) is unchanged. ``max_grid`` 0, or a map already within it,
    is returned as it is."""
    height, width = feature_map.shape[-2:]
    if max_grid <= 0 or (height <= max_grid and width <= max_grid):
        return feature_map
    cells = (_cell_side(height, max_grid), _cell_side(width, max_grid))
    return nnf.avg_pool2d(feature_map, kernel_size=cells, stride=cells)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off on CUDA, for the global pooling and the classification layer: logits and the penultimate
    vector stay float32 under bfloat16 autocast, as when they were computed outside it (a no-op elsewhere, so a
    CPU pass, and its ``torch.jit.trace``, has no autocast region at all)."""
    return torch.autocast("cuda", enabled=False) if device_type == "cuda" else contextlib.nullcontext()


class Classifier(nn.Module):
    """Base class: normalisation, the hooked representations, and the access the detectors need to the
    classification layer. Subclasses set ``default_layer`` and ``pooled_layer`` and implement ``forward`` on
    images in [0, 1] and ``classifier_head``."""

    # the module read as feature_map under ``features.layer: auto``
    default_layer: str
    # the module whose global average is exactly the classification layer's input (ReAct, ASH and KIRBY's CAMs
    # rely on that); None where the architecture has no such module or it is unknown
    pooled_layer: str | None = None

    def __init__(self, mean: tuple[float, ...] = IMAGE_MEAN, std: tuple[float, ...] = IMAGE_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.feature_layer = AUTO_LAYER
        self.max_grid = 0  # features.max_grid: 0 = the feature map as the module gives it
        self.image_size = 32  # the side of the images it was trained on (data.image_size), as its checkpoint says

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def core(self) -> nn.Module:
        """The module whose module names (``features.layer``) and state-dict keys (checkpoints) are the
        architecture's own: the classifier itself, or the torchvision model it wraps."""
        return self

    def classifier_head(self) -> nn.Linear:
        raise NotImplementedError

    def stage_layers(self) -> tuple[str, ...]:
        """The output module of each resolution stage (what the generator's perceptual term compares); empty
        where the architecture does not name them."""
        return ()

    def resolved_layer(self) -> str:
        return self.default_layer if self.feature_layer == AUTO_LAYER else self.feature_layer

    def set_feature_layer(self, name: str) -> Classifier:
        """Read ``feature_map`` from the module ``name`` of :meth:`core` (``auto``: the architecture's default)."""
        if name != AUTO_LAYER and name not in dict(self.core().named_modules()):
            examples = ", ".join(n for n, _ in self.core().named_children())
            raise ParamsError(f"features.layer = {name!r}: {type(self.core()).__name__} has no such module; use auto "
                              f"or a module name such as {examples}")
        self.feature_layer = name
        return self

    def set_max_grid(self, max_grid: int) -> Classifier:
        """Pool ``feature_map`` to at most ``max_grid`` cells a side (:func:`bounded_grid`; 0 = as it comes)."""
        self.max_grid = int(max_grid)
        return self

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        """{"feature_map", "penultimate", "logits"} of images in [0, 1] (N×3×H×W), from one forward pass."""
        modules = dict(self.core().named_modules())
        with recording({"feature_map": modules[self.resolved_layer()]},
                       {"penultimate": self.classifier_head()}) as found:
            logits = self(x)
        return {"feature_map": bounded_grid(found["feature_map"], self.max_grid), "penultimate": found["penultimate"],
                "logits": logits}

    def for_inference(self) -> Classifier:
        """A frozen copy for scoring (eval mode, no parameter gradients) that computes the same function up to
        float rounding, with every BatchNorm that directly follows a convolution folded into that convolution's
        weights. Subclasses fold what their layout allows; here nothing is folded."""
        return copy.deepcopy(self).eval().requires_grad_(False)

    @staticmethod
    def penultimate(feature_map: Tensor) -> Tensor:
        """The global average of a feature map: the penultimate vector when it is the ``pooled_layer``'s."""
        return nnf.adaptive_avg_pool2d(feature_map, 1).flatten(1)

    def logits_from_penultimate(self, penultimate: Tensor) -> Tensor:
        return self.classifier_head()(penultimate)

    def reads_pooled_layer(self) -> bool:
        """Whether ``feature_map`` pools into the classification layer's input (see ``pooled_layer``)."""
        return self.pooled_layer is not None and self.resolved_layer() == self.pooled_layer

    def logits_from_feature_map(self, feature_map: Tensor) -> Tensor:
        """Logits from a (possibly rectified or pruned) feature map: global average, then the classification
        layer; only where that is how the network computes them."""
        if not self.reads_pooled_layer():
            raise ParamsError(
                f"the feature map (features.layer = {self.feature_layer!r}, module {self.resolved_layer()!r}) does "
                "not pool into the classification layer, so logits cannot be computed from it (ReAct, ASH, KIRBY "
                "need that); use a built-in classifier.arch with features.layer: auto, or drop those methods")
        return self.logits_from_penultimate(self.penultimate(feature_map))
