"""The frozen CIFAR classifier F: CIFAR ResNets (He et al. 2016, option-A shortcuts) and WRN-40-2.

Every classifier takes images in [0, 1] (N×3×32×32), normalises them itself, and exposes the three
representations the rejection head and the post-hoc detectors read: ``feature_map`` (the last
convolutional feature map, the paper's head input), ``penultimate`` (its global average) and ``logits``.
The ResNets are state-dict compatible with the akamaster/pytorch_resnet_cifar10 checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import CheckpointError
from .checkpoints import load_checkpoint, load_state_dict_checked, save_checkpoint

PRETRAINED_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}
PRETRAINED_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
# The normalisation the pretrained ResNets were trained with.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class CifarClassifier(nn.Module):
    """Base class: normalisation plus the split into feature map → penultimate → logits."""

    feature_channels: int

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def feature_map(self, x: Tensor) -> Tensor:
        """Last convolutional feature map (N×C×8×8) of images in [0, 1]."""
        raise NotImplementedError

    def classifier_head(self) -> nn.Linear:
        raise NotImplementedError

    def for_inference(self) -> CifarClassifier:
        """A frozen copy for scoring (eval mode, no parameter gradients) that computes the same function up to
        float rounding, with every BatchNorm that directly follows a convolution folded into that convolution's
        weights. Subclasses fold what their layout allows; here nothing is folded."""
        return copy.deepcopy(self).eval().requires_grad_(False)

    @staticmethod
    def penultimate(feature_map: Tensor) -> Tensor:
        return nnf.adaptive_avg_pool2d(feature_map, 1).flatten(1)

    def logits_from_penultimate(self, penultimate: Tensor) -> Tensor:
        return self.classifier_head()(penultimate)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_from_penultimate(self.penultimate(self.feature_map(x)))


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


class CifarResNet(CifarClassifier):
    """ResNet-(6n+2) for 32×32 inputs; keys conv1, bn1, layer1..3, linear as in the pretrained files."""

    feature_channels = 64

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
        out = nnf.relu(self.bn1(self.conv1(self.normalise(x))))
        return self.layer3(self.layer2(self.layer1(out)))

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


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
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
        y = self.conv1(o)
        y = self.conv2(nnf.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(CifarClassifier):
    """WRN-depth-width (Zagoruyko & Komodakis 2016); WRN-40-2 is the paper's classifier."""

    def __init__(self, depth: int = 40, width: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.feature_channels = widths[3]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        return nnf.relu(self.bn(self.blocks(self.conv1(self.normalise(x)))))

    def classifier_head(self) -> nn.Linear:
        return self.fc


ARCHITECTURES: dict[str, Callable[[int], CifarClassifier]] = {
    **{arch: partial(CifarResNet, depth) for arch, depth in RESNET_DEPTHS.items()},
    "wrn40_2": partial(WideResNet, 40, 2),
}


def build_classifier(arch: str, num_classes: int = 10) -> CifarClassifier:
    """A freshly initialised classifier of the named architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}; choose from {list(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes)


def _env_folder(variable: str) -> Path | None:
    """The folder an environment variable names, made absolute against the working directory (a stage's is the
    project root), as ``dmr_core.data.datasets.env_folder`` does; None if unset."""
    value = os.environ.get(variable)
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def pretrained_path(arch: str) -> Path:
    """Locate (or download) the pretrained CIFAR-10 weights for ``arch`` and verify their hash prefix.

    Looks in ``$DMR_MODEL_HOME``, then ``$DMR_DATA_HOME/../models``, then the download cache
    ``$DMR_CACHE`` (default ``~/.cache/dmr-pipeline``), downloading there if absent. Relative values are taken
    from the project root the stage runs in.
    """
    if arch not in PRETRAINED_FILES:
        raise CheckpointError(f"no pretrained weights for {arch!r}: available for {sorted(PRETRAINED_FILES)}")
    name = PRETRAINED_FILES[arch]
    hash_prefix = name.rsplit("-", 1)[1].split(".")[0]
    candidates = []
    if model_home := _env_folder("DMR_MODEL_HOME"):
        candidates.append(model_home / name)
    if data_home := _env_folder("DMR_DATA_HOME"):
        candidates.append(data_home.parent / "models" / name)
    cache = (_env_folder("DMR_CACHE") or Path.home() / ".cache" / "dmr-pipeline") / "models"
    candidates.append(cache / name)
    for path in candidates:
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if not digest.startswith(hash_prefix):
                raise CheckpointError(f"{path} has sha256 {digest[:8]}…, expected {hash_prefix}…: the file is corrupt; replace it")
            return path
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(PRETRAINED_URL.format(name), str(cache / name), hash_prefix=hash_prefix)
    except Exception as err:
        raise CheckpointError(
            f"pretrained weights {name} not found in {', '.join(str(c.parent) for c in candidates)} and the "
            f"download failed ({err}). Either put the file in $DMR_MODEL_HOME, or allow the download, "
            f"or set classifier.init: scratch"
        ) from None
    return cache / name


def load_pretrained(arch: str) -> CifarClassifier:
    """A classifier initialised from the published CIFAR-10 weights."""
    model = build_classifier(arch)
    path = pretrained_path(arch)
    payload = load_checkpoint(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    load_state_dict_checked(model, state, str(path))
    return model


def save_classifier(model: CifarClassifier, arch: str, path: str | Path, extra: dict | None = None) -> None:
    save_checkpoint({"arch": arch, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_classifier(path: str | Path) -> CifarClassifier:
    """Load a classifier saved by the classifier stage, in eval mode with frozen parameters."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a classifier checkpoint of this project (no arch/state_dict)")
    model = build_classifier(payload["arch"])
    load_state_dict_checked(model, payload["state_dict"], str(path))
    model.eval().requires_grad_(False)
    return model
