"""Any torchvision classification model as the classifier F (``classifier.arch: torchvision:<name>``).

The pipeline's images are S×S in [0, 1] (S = data.image_size). The wrapper normalises them with the statistics
of the model's weights (from their transforms metadata) and runs the model on them at their own size: a
convolutional network takes any size, so a 128-px photo is seen at 128 px. Only a model built for one size (a ViT)
is fed that size, and ``classifier.input_size`` resizes (bilinear) where a user asks for it (e.g. 224 for 32-px
CIFAR images into an ImageNet model). Which modules hold the
classification layer and the default feature map is found once per model by a forward pass on the meta
device (:func:`torchvision_layout`), so no per-model table is needed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from ..errors import CheckpointError, ParamsError
from .classifier_base import IMAGE_MEAN, IMAGE_STD, Classifier
from .hooks import on_meta, trace_layers

PREFIX = "torchvision:"
# what torchvision's ImageNet models take when their weights' metadata says nothing
DEFAULT_INPUT_SIZE = 224
LIST_HINT = ("list them with: python -c \"import torchvision.models as m; print(m.list_models(module=m))\" "
             "(prefix each with torchvision:)")


# The classification models of the pinned torchvision (``torchvision.models.list_models(module=torchvision.models)``:
# not detection, segmentation, video, quantized), written out because importing torchvision costs every stage about
# three seconds (it imports torch's compiler) and most stages never build a torchvision model; a test checks the
# list against the installed torchvision.
TORCHVISION_CLASSIFIERS: tuple[str, ...] = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0",
    "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14",
    "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def torchvision_names() -> tuple[str, ...]:
    """The classification models of ``torchvision.models`` (not detection, segmentation, video, quantized)."""
    return TORCHVISION_CLASSIFIERS


class TorchvisionClassifier(Classifier):
    """A torchvision model ``net`` (its own module names and state-dict keys; :meth:`core`) taking images in
    [0, 1]: resized to ``input_size`` (None: as they come) and normalised with ``mean`` / ``std``."""

    def __init__(self, net: nn.Module, *, head: str, default_layer: str, pooled_layer: str | None = None,
                 input_size: int | None = None, mean: tuple[float, ...] = IMAGE_MEAN,
                 std: tuple[float, ...] = IMAGE_STD, stages: tuple[str, ...] = ()) -> None:
        super().__init__(mean, std)
        self.net = net
        self.head_name, self.default_layer, self.pooled_layer = head, default_layer, pooled_layer
        self.input_size = input_size
        self._stages = stages

    def core(self) -> nn.Module:
        return self.net

    def classifier_head(self) -> nn.Linear:
        return self.net.get_submodule(self.head_name)

    def stage_layers(self) -> tuple[str, ...]:
        return self._stages

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size is not None:
            x = nnf.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.net(self.normalise(x))
        return out if isinstance(out, Tensor) else out[0]  # Inception/GoogLeNet in training mode: main logits first


@dataclass(frozen=True)
class TorchvisionLayout:
    head: str                  # the classification nn.Linear
    default_layer: str         # features.layer: auto (hooks.LayerTrace.last_spatial_layer)
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _weights(name: str):
    try:
        import torchvision

        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _get_model(name: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():  # GoogLeNet / Inception warn that their default init will change
        warnings.simplefilter("ignore", FutureWarning)
        import torchvision

        return torchvision.models.get_model(name, **kwargs)


@functools.cache
def torchvision_layout(name: str) -> TorchvisionLayout:
    """Input size and normalisation from the default weights' transforms (224 and ImageNet's statistics where
    there are none), and the classification layer and default feature map from a forward pass on meta."""
    if name not in torchvision_names():
        raise ParamsError(f"classifier.arch = {PREFIX + name!r}: torchvision has no classification model of that "
                          f"name; {LIST_HINT}")
    weights = _weights(name)
    transforms = weights.transforms() if weights is not None else None
    size = int(transforms.crop_size[0]) if transforms is not None else DEFAULT_INPUT_SIZE
    mean = tuple(transforms.mean) if transforms is not None else IMAGE_MEAN
    std = tuple(transforms.std) if transforms is not None else IMAGE_STD
    net = on_meta(lambda: _get_model(name, num_classes=2)).eval()
    size = int(getattr(net, "image_size", size))  # a ViT is built for one size (vit_h_14: 224 untrained)
    trace = trace_layers(net, lambda: net(torch.empty(1, 3, size, size, device="meta")))
    if trace.head is None:
        raise ParamsError(f"classifier.arch = {PREFIX + name!r}: its output is not made by an nn.Linear layer (DMR "
                          "reads that layer's input as the penultimate vector); choose another model")
    default = trace.last_spatial_layer()
    if default is None:
        raise ParamsError(f"classifier.arch = {PREFIX + name!r}: no module before its classification layer outputs "
                          "a feature map; choose another model")
    return TorchvisionLayout(trace.head, default, size, mean, std)


def _replace_head(net: nn.Module, head: str, num_classes: int) -> None:
    """The classification layer swapped for a fresh one with ``num_classes`` outputs (fine-tuning from ImageNet)."""
    old = net.get_submodule(head)
    parent_name, _, child = head.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def build_torchvision(name: str, num_classes: int, pretrained: bool = False) -> TorchvisionClassifier:
    """``torchvision:<name>``: random weights, or torchvision's default ImageNet weights (downloaded by torchvision
    into ``$TORCH_HOME``) with the classification layer replaced for ``num_classes``."""
    layout = torchvision_layout(name)
    if pretrained:
        weights = _weights(name)
        if weights is None:
            raise CheckpointError(f"torchvision has no pretrained weights for {name}; set classifier.init: scratch")
        try:
            net = _get_model(name, weights=weights)
        except Exception as err:  # offline: URLError, HTTPError, OSError, … depending on where it failed
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise CheckpointError(
                f"torchvision weights {weights} for {name} could not be loaded ({detail}); allow the download "
                "(it is cached in $TORCH_HOME, default ~/.cache/torch) or set classifier.init: scratch") from None
        _replace_head(net, layout.head, num_classes)
    else:
        net = _get_model(name, num_classes=num_classes)
    return TorchvisionClassifier(net, head=layout.head, default_layer=layout.default_layer,
                                 input_size=fixed_input_size(net), mean=layout.mean, std=layout.std)


def fixed_input_size(net: nn.Module) -> int | None:
    """The one input size a model is built for (a ViT's ``image_size``), or None for a model that takes any."""
    size = getattr(net, "image_size", None)
    return int(size) if size is not None else None

