"""The classifiers built for 32×32 inputs: CIFAR ResNets (He et al. 2016, option-A shortcuts), WRN-40-2 (the
paper's), DenseNet-BC-100 (k = 12; the CIFAR-10 backbone of the post-hoc OOD literature), and torchvision's
ResNet-50 and DenseNet-121 with a CIFAR stem (the paper's Table 5).

The CIFAR ResNets are state-dict compatible with the akamaster/pytorch_resnet_cifar10 checkpoints, DenseNet-BC-100
with the deeplearning-wisc/dice one (its ``DenseNet3(100, 10, 12, reduction=0.5, bottleneck=True)``). The stem of
the two ImageNet architectures is made CIFAR's (a 3×3 stride-1 first convolution, no max-pool), as the CIFAR
literature does, so a 32×32 image still ends in a 4×4 feature map rather than 1×1.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .classifier_base import Classifier, full_precision
from .torchvision_nets import TorchvisionClassifier

RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}


class _BasicBlockA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def shortcut(self, x: Tensor) -> Tensor:
        if self.pad == 0:
            return x
        # Option A: subsample and zero-pad channels, no parameters (as in the pretrained files).
        return nnf.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = nnf.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnf.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    """ResNet-(6n+2) for 32×32 inputs; keys conv1, bn1, layer1..3, linear as in the pretrained files."""

    feature_channels = 64
    default_layer = pooled_layer = "layer3"

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlockA(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def feature_map(self, x: Tensor) -> Tensor:
        """Last convolutional feature map (N×64×8×8) of images in [0, 1]: layer3's output."""
        out = nnf.relu(self.bn1(self.conv1(self.normalise(x))))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.feature_map(x)
        with full_precision(fmap.device.type):
            return self.linear(self.penultimate(fmap.float()))

    def for_inference(self) -> CifarResNet:
        """Every conv → BN pair folded into one convolution (``fuse_conv_bn_eval``): scoring on this
        project's CPUs ran about 9 % faster side by side, and the outputs differ only by float rounding."""
        folded = copy.deepcopy(self).eval().requires_grad_(False)
        pairs = [(folded, "conv1", "bn1")] + [
            (block, f"conv{i}", f"bn{i}")
            for stage in (folded.layer1, folded.layer2, folded.layer3) for block in stage for i in (1, 2)
        ]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        return folded

    def classifier_head(self) -> nn.Linear:
        return self.linear

    def stage_layers(self) -> tuple[str, ...]:
        return ("layer1", "layer2", "layer3")


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        # a float, not an nn.Dropout: no module and no key in the state dict, so a network without dropout is
        # built, named and saved exactly as before the option existed
        self.dropout = dropout
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)
            if (stride != 1 or in_planes != planes) else None
        )

    def forward(self, x: Tensor) -> Tensor:
        o = nnf.relu(self.bn1(x))
        y = nnf.relu(self.bn2(self.conv1(o)))
        if self.dropout > 0:  # between the two convolutions, as Zagoruyko & Komodakis; skipped at 0 so that no
            y = nnf.dropout(y, self.dropout, self.training)  # random number is drawn (the RNG stream is unchanged)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class _PooledFc(Classifier):
    """A network whose logits are ``fc`` of the global average of its ``feature_map``."""

    fc: nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.feature_map(x)
        with full_precision(fmap.device.type):
            return self.fc(self.penultimate(fmap.float()))

    def classifier_head(self) -> nn.Linear:
        return self.fc


class WideResNet(_PooledFc):
    """WRN-depth-width (Zagoruyko & Komodakis 2016); WRN-40-2 is the paper's classifier. ``dropout`` is the
    probability of the dropout between the two convolutions of every block while training (their "WRN-d-k with
    dropout"; 0.3 in the recipe the paper's classifiers were trained with, Hendrycks et al.'s OE code base)."""

    # the final BN + ReLU: a module (without parameters, so old state dicts load) so that a hook can read it
    default_layer = pooled_layer = "relu"

    def __init__(self, depth: int = 40, width: int = 2, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.feature_channels = widths[3]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """Last feature map (N×C×8×8) of images in [0, 1]: the final BN + ReLU."""
        return self.relu(self.bn(self.blocks(self.conv1(self.normalise(x)))))

    def stage_layers(self) -> tuple[str, ...]:
        """The last block of each third (each resolution)."""
        blocks = len(self.blocks)
        return tuple(f"blocks.{blocks * (i + 1) // 3 - 1}" for i in range(3))


# The normalisation DenseNet-BC-100's published CIFAR-10 weights were trained with (CIFAR-10's own statistics).
DENSENET_BC_MEAN = (0.4914, 0.4822, 0.4465)
DENSENET_BC_STD = (0.2023, 0.1994, 0.2010)


class _DenseBottleneck(nn.Module):
    """BN-ReLU-1×1 conv to 4k channels, BN-ReLU-3×3 conv to k, concatenated to the input (Huang et al. 2017)."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(nnf.relu(self.bn2(self.conv1(nnf.relu(self.bn1(x))))))
        return torch.cat([x, out], 1)


class _DenseBlock(nn.Module):
    def __init__(self, layers: int, in_planes: int, growth: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_DenseBottleneck(in_planes + i * growth, growth) for i in range(layers)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class _Transition(nn.Module):
    """BN-ReLU-1×1 conv to ``out_planes``, then 2×2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return nnf.avg_pool2d(self.conv1(nnf.relu(self.bn1(x))), 2)


class DenseNetBC(_PooledFc):
    """DenseNet-BC (Huang et al. 2017) for 32×32 inputs: a 3×3 stem of 2k channels, three dense blocks of
    (depth − 4) / 6 bottleneck layers with growth rate k, compression-0.5 transitions, BN-ReLU, global average pool
    and the classification layer. DenseNet-BC-100 (k = 12, 0.79 M parameters) is the network DICE, ReAct and ASH
    report their CIFAR-10 tables on (as "DenseNet-101"); its feature map is the final ReLU, N×342×8×8."""

    default_layer = pooled_layer = "relu"

    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__(DENSENET_BC_MEAN, DENSENET_BC_STD)
        layers = (depth - 4) // 6
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, 1, 1, bias=False)
        self.block1 = _DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.trans1 = _Transition(planes, planes // 2)
        planes //= 2
        self.block2 = _DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.trans2 = _Transition(planes, planes // 2)
        planes //= 2
        self.block3 = _DenseBlock(layers, planes, growth)
        planes += layers * growth
        self.feature_channels = planes
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():  # the reference implementation's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The final BN + ReLU (N×342×8×8 for DenseNet-BC-100) of images in [0, 1]."""
        out = self.trans2(self.block2(self.trans1(self.block1(self.conv1(self.normalise(x))))))
        return self.relu(self.bn1(self.block3(out)))

    def stage_layers(self) -> tuple[str, ...]:
        return ("block1", "block2", "block3")


def _cifar_stem(channels: int) -> nn.Conv2d:
    """A 3×3 stride-1 first convolution, initialised as torchvision initialises the one it replaces."""
    conv = nn.Conv2d(3, channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def cifar_resnet50(num_classes: int = 10) -> TorchvisionClassifier:
    """torchvision's ResNet-50 with a CIFAR stem; feature map layer4 (N×2048×4×4 for 32×32 images)."""
    from torchvision.models import resnet50

    net = resnet50(num_classes=num_classes)
    net.conv1, net.maxpool = _cifar_stem(64), nn.Identity()
    return TorchvisionClassifier(net, head="fc", default_layer="layer4", pooled_layer="layer4",
                                 stages=("layer1", "layer2", "layer3", "layer4"))


def cifar_densenet121(num_classes: int = 10) -> TorchvisionClassifier:
    """torchvision's DenseNet-121 with a CIFAR stem; feature map the final ReLU after ``features``
    (N×1024×4×4 for 32×32 images)."""
    from torchvision.models import densenet121

    net = densenet121(num_classes=num_classes)
    net.features.conv0 = _cifar_stem(64)
    delattr(net.features, "pool0")
    # torchvision applies this ReLU functionally after ``features``; a module makes it hookable (applying ReLU
    # twice changes nothing, and it has no parameters, so the state dict is torchvision's). It is a Threshold at 0,
    # the same function, because torchvision's ReLU after it runs in place: nn.ReLU keeps its output for the
    # backward pass, which that in-place ReLU would overwrite (training would fail), Threshold keeps its input.
    net.features.add_module("relu5", nn.Threshold(0.0, 0.0))
    return TorchvisionClassifier(net, head="classifier", default_layer="features.relu5",
                                 pooled_layer="features.relu5",
                                 stages=tuple(f"features.denseblock{i}" for i in range(1, 5)))

