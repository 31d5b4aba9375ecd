"""The classifier F: which architectures there are, and how one is initialised, saved and loaded.

Architectures: the CIFAR ResNets and WRN-40-2 (``cifar_nets``; the ResNets with published CIFAR-10 weights),
ResNet-50 and DenseNet-121 with a CIFAR stem, and any torchvision classification model as
``torchvision:<name>`` (``torchvision_nets``). Every one is built with the ID data's class count and exposes
``representations()`` (``classifier_base``). A checkpoint of this project stores ``arch``, ``num_classes`` and
``class_names`` beside the state dict of the architecture's own module (:meth:`Classifier.core`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ParamsError
from ..locations import cache_dir, env_folder, is_file
from .checkpoints import load_checkpoint, load_checkpoint_with_digest, load_state_dict_checked, save_checkpoint
from .cifar_nets import RESNET_DEPTHS, CifarResNet, DenseNetBC, WideResNet, cifar_densenet121, cifar_resnet50
from .classifier_base import AUTO_LAYER, IMAGE_MEAN, IMAGE_STD, Classifier
from .hooks import on_meta, trace_layers
from .torchvision_nets import PREFIX as TORCHVISION_PREFIX
from .torchvision_nets import TorchvisionClassifier, build_torchvision, torchvision_layout, torchvision_names

# Older code names the base class by its first architectures.
CifarClassifier = Classifier
__all__ = ["AUTO_LAYER", "IMAGE_MEAN", "IMAGE_STD", "CifarClassifier", "CifarResNet", "Classifier", "WideResNet"]

PRETRAINED_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
    "densenet100_bc": "densenet100bc-cifar10-deaefd08.pth.tar",
}
PRETRAINED_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
# where a file is published under another name than ours (the hash prefix is checked all the same)
PRETRAINED_URLS = {
    "densenet100_bc": "https://github.com/deeplearning-wisc/dice/raw/8acfb8d/checkpoints/CIFAR-10/densenet/"
                      "checkpoint_100.pth.tar",
}
# the class count of the published CIFAR-10 weights
PRETRAINED_CLASSES = 10
# classifier.input_size: auto = the images as they come (a model built for one size: that size)
AUTO_INPUT_SIZE = "auto"

ARCHITECTURES: dict[str, Callable[..., Classifier]] = {
    **{arch: partial(CifarResNet, depth) for arch, depth in RESNET_DEPTHS.items()},
    "wrn40_2": partial(WideResNet, 40, 2),
    "densenet100_bc": partial(DenseNetBC, 100, 12),
    "resnet50": cifar_resnet50,
    "densenet121": cifar_densenet121,
}
# every value classifier.arch may take
ARCH_NAMES: tuple[str, ...] = (*ARCHITECTURES, *(TORCHVISION_PREFIX + name for name in torchvision_names()))
# the architectures built with a training dropout (classifier.dropout), read off their builders' signatures
DROPOUT_ARCHS: tuple[str, ...] = tuple(
    name for name, build in ARCHITECTURES.items() if "dropout" in inspect.signature(build).parameters)


def check_dropout(arch: str, dropout: float) -> None:
    """Refuse, in one line, a training dropout for an architecture that has none (params validation says the same
    before any stage runs)."""
    if dropout and arch not in DROPOUT_ARCHS:
        raise ParamsError(f"classifier.dropout = {dropout} with classifier.arch = {arch!r}: only "
                          f"{', '.join(DROPOUT_ARCHS)} {'has' if len(DROPOUT_ARCHS) == 1 else 'have'} a dropout; "
                          "set classifier.dropout: 0")


def build_classifier(arch: str, num_classes: int = 10, dropout: float = 0.0) -> Classifier:
    """A freshly initialised classifier of the named architecture with ``num_classes`` outputs; ``dropout`` > 0
    (while training) only for the architectures of ``DROPOUT_ARCHS``."""
    check_dropout(arch, dropout)
    if arch.startswith(TORCHVISION_PREFIX):
        return build_torchvision(arch.removeprefix(TORCHVISION_PREFIX), num_classes)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}; choose from {list(ARCHITECTURES)} or torchvision:<name>")
    # dropout 0 is not passed on: the network (and the random numbers drawn building it) is the one without it
    return ARCHITECTURES[arch](num_classes=num_classes, **({"dropout": dropout} if dropout else {}))


@dataclass(frozen=True)
class ArchitectureLayout:
    """What the params and the loaders need to know about an architecture, without building its weights."""

    head: str                          # the classification layer's module name (in ``core()``)
    default_layer: str                 # features.layer: auto
    pooled_layer: str | None           # see Classifier.pooled_layer
    layers: tuple[str, ...]            # modules with a tensor output that run before the head: valid features.layer
    penultimate_size: int
    stage_layers: tuple[str, ...]


@functools.cache
def architecture_layout(arch: str) -> ArchitectureLayout:
    """``arch`` built on the meta device (no memory, no weights; any class count) and run once on a meta image
    (32×32, or the size a torchvision model's weights were trained at), so that a new architecture needs no second
    table in the params. The layout does not depend on the image size."""
    model = on_meta(lambda: build_classifier(arch, num_classes=2)).eval()
    core = model.core()
    size = (torchvision_layout(arch.removeprefix(TORCHVISION_PREFIX)).input_size
            if arch.startswith(TORCHVISION_PREFIX) else 32)
    trace = trace_layers(core, lambda: model(torch.empty(1, 3, size, size, device="meta")))
    head = next(name for name, module in core.named_modules() if module is model.classifier_head())
    return ArchitectureLayout(head, model.default_layer, model.pooled_layer, trace.before_head,
                              model.classifier_head().in_features, model.stage_layers())


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
    if model_home := env_folder("DMR_MODEL_HOME"):
        candidates.append(model_home / name)
    if data_home := env_folder("DMR_DATA_HOME"):
        candidates.append(data_home.parent / "models" / name)
    cache = cache_dir() / "models"
    candidates.append(cache / name)
    for path in candidates:
        if is_file(path):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if not digest.startswith(hash_prefix):
                raise CheckpointError(f"{path} has sha256 {digest[:8]}…, expected {hash_prefix}…: the file is corrupt; replace it")
            return path
    cache.mkdir(parents=True, exist_ok=True)
    try:
        url = PRETRAINED_URLS.get(arch, PRETRAINED_URL.format(name))
        torch.hub.download_url_to_file(url, str(cache / name), hash_prefix=hash_prefix)
    except Exception as err:
        raise CheckpointError(
            f"pretrained weights {name} not found in {', '.join(str(c.parent) for c in candidates)} and the "
            f"download failed ({err}). Either put the file in $DMR_MODEL_HOME, or allow the download, "
            f"or set classifier.init: scratch"
        ) from None
    return cache / name


def load_pretrained(arch: str, num_classes: int = PRETRAINED_CLASSES) -> Classifier:
    """A classifier initialised from published weights: the CIFAR-10 files of the CIFAR ResNets, or
    torchvision's ImageNet weights with a new classification layer of ``num_classes`` outputs."""
    if arch.startswith(TORCHVISION_PREFIX):
        return build_torchvision(arch.removeprefix(TORCHVISION_PREFIX), num_classes, pretrained=True)
    if num_classes != PRETRAINED_CLASSES:
        raise CheckpointError(
            f"classifier.init = 'pretrained': the published {arch} weights are CIFAR-10's ({PRETRAINED_CLASSES} "
            f"classes) but the ID data has {num_classes} classes; set classifier.init: scratch (or start from your "
            "own weights with classifier.init: checkpoint)")
    model = build_classifier(arch)
    path = pretrained_path(arch)
    payload = load_checkpoint(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    load_state_dict_checked(model, state, str(path))
    return model


def file_sha256(path: str | Path) -> str:
    """The content hash recorded with a classifier started from a user's checkpoint (its provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_dict_of(payload: object, path: Path) -> dict[str, Tensor]:
    """A plain state dict, or the ``state_dict`` entry of a dict (this project's checkpoints, most training
    scripts'), with DataParallel's ``module.`` prefix removed."""
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"classifier.checkpoint {path} holds no state dict (name → tensor); save one with "
                              "torch.save(model.state_dict(), path)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_user_checkpoint(path: str | Path, arch: str, num_classes: int,
                         class_names: list[str] | None = None, dropout: float = 0.0,
                         image_size: int | None = None) -> Classifier:
    """A classifier of ``arch`` with the weights of a user's file (``classifier.checkpoint``), checked against the
    architecture (keys, shapes) and the ID data (class count; class names and the image size where the file
    records them) before anything trains. Read with ``weights_only=True``: no object in the file is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"classifier.checkpoint {path} not found; relative paths are taken from the project root")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign pickle, a truncated file, …
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:160]
        raise CheckpointError(f"classifier.checkpoint {path} is not a weights-only torch file ({detail}); save the "
                              "weights with torch.save(model.state_dict(), path)") from None
    if isinstance(payload, dict) and isinstance(payload.get("arch"), str) and payload["arch"] != arch:
        raise CheckpointError(f"classifier.checkpoint {path} is a {payload['arch']} checkpoint but classifier.arch = "
                              f"{arch!r}; set classifier.arch: {payload['arch']}")
    state = _state_dict_of(payload, path)
    head_key = architecture_layout(arch).head + ".weight"
    if head_key in state and state[head_key].ndim == 2 and state[head_key].shape[0] != num_classes:
        raise CheckpointError(
            f"classifier.checkpoint {path}: its classification layer {head_key} has {state[head_key].shape[0]} "
            f"outputs but the ID data has {num_classes} classes; use a checkpoint trained on these classes")
    saved_size = payload.get("image_size") if isinstance(payload, dict) else None
    if image_size is not None and isinstance(saved_size, int) and saved_size != image_size:
        raise CheckpointError(f"classifier.checkpoint {path} was trained on {saved_size}×{saved_size} images but the "
                              f"data are {image_size}×{image_size} (data.image_size); set data.image_size: "
                              f"{saved_size}, or use a checkpoint trained at {image_size} px")
    saved_names = payload.get("class_names") if isinstance(payload, dict) else None
    if class_names is not None and isinstance(saved_names, list) and list(saved_names) != list(class_names):
        raise CheckpointError(f"classifier.checkpoint {path} was trained on the classes {saved_names} but the ID "
                              f"data's are {list(class_names)}; use a checkpoint of these classes, in this order")
    model = build_classifier(arch, num_classes, dropout)
    load_state_dict_checked(model.core(), state, f"classifier.checkpoint {path}")
    return model


def initial_classifier(arch: str, init: str, num_classes: int, class_names: list[str] | None = None,
                       checkpoint: str | Path | None = None, dropout: float = 0.0, image_size: int = 32,
                       input_size: int | str = AUTO_INPUT_SIZE) -> Classifier:
    """The classifier training starts from (``classifier.init``): published weights, random ones (drawn from the
    global RNG; seed it first), or the user's ``checkpoint``; trained with ``dropout`` (``classifier.dropout``)
    where the architecture has one. Dropout only acts in training: the saved weights load into the network
    without it (:func:`load_classifier`), which computes the same in eval mode. It takes images of ``image_size``
    (data.image_size), resized first to ``input_size`` (classifier.input_size) where one is asked for."""
    if init == "pretrained":
        check_dropout(arch, dropout)  # none of the published weights' architectures has one
        model = load_pretrained(arch, num_classes)
    elif init == "scratch":
        model = build_classifier(arch, num_classes, dropout)
    elif init == "checkpoint":
        if checkpoint is None:
            raise CheckpointError("classifier.init = 'checkpoint' needs classifier.checkpoint: the file to start from")
        model = load_user_checkpoint(checkpoint, arch, num_classes, class_names, dropout, image_size)
    else:
        raise ValueError(f"unknown classifier init {init!r}; choose pretrained, scratch or checkpoint")
    return set_input_size(model, image_size, input_size)


def input_size_problem(arch: str, image_size: int, input_size: int | str = AUTO_INPUT_SIZE) -> str | None:
    """Why ``arch`` cannot classify images of ``image_size`` resized to ``input_size`` (one forward pass on the
    meta device, no weights), as one line naming the keys; None if it can."""
    model = set_input_size(on_meta(lambda: build_classifier(arch, num_classes=2)).eval(), image_size, input_size)
    try:
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError) as err:
        seen = model.input_size if isinstance(model, TorchvisionClassifier) and model.input_size else image_size
        detail = " ".join(str(err).split())[:120]
        return (f"classifier.arch = {arch!r} cannot take {seen}×{seen} images (data.image_size = {image_size}, "
                f"classifier.input_size = {input_size!r}: {detail}); raise data.image_size or set "
                "classifier.input_size to the size its weights were trained at")
    return None


def set_input_size(model: Classifier, image_size: int, input_size: int | str = AUTO_INPUT_SIZE) -> Classifier:
    """``model`` for images of ``image_size``: a torchvision model resized to ``input_size`` first where one is
    given (``auto``: none, but for a model built for one size); the CIFAR-stem nets take any size as it is."""
    model.image_size = int(image_size)
    if input_size != AUTO_INPUT_SIZE:
        if not isinstance(model, TorchvisionClassifier):
            raise ParamsError(f"classifier.input_size = {input_size!r}: only a torchvision model resizes its input; "
                              "the CIFAR-stem nets are built for the data's size (data.image_size): set "
                              "classifier.input_size: auto")
        model.input_size = int(input_size)
    return model


def save_classifier(model: Classifier, arch: str, path: str | Path, extra: dict | None = None,
                    class_names: list[str] | None = None) -> None:
    """The architecture, its class count and names, and the state dict of :meth:`Classifier.core`."""
    # 32 px stays implicit (a checkpoint without the key means 32), so a 32-px run's checkpoint is as it was
    sizes = {"image_size": model.image_size} if model.image_size != 32 else {}
    if arch.startswith(TORCHVISION_PREFIX):
        sizes["input_size"] = model.input_size
    save_checkpoint({"arch": arch, "num_classes": model.classifier_head().out_features,
                     "class_names": None if class_names is None else list(class_names), **sizes,
                     "state_dict": model.core().state_dict(), **(extra or {})}, path)


def load_classifier(path: str | Path, feature_layer: str = AUTO_LAYER, max_grid: int = 0) -> Classifier:
    """Load a classifier saved by the classifier stage, in eval mode with frozen parameters, reading its
    ``feature_map`` from ``feature_layer`` (``features.layer``), pooled to at most ``max_grid`` cells a side
    (``features.max_grid``). A checkpoint from before class counts were stored gets its count from the
    classification layer's weight."""
    return load_classifier_with_digest(path, feature_layer, max_grid)[0]


def load_classifier_with_digest(path: str | Path, feature_layer: str = AUTO_LAYER, max_grid: int = 0
                                ) -> tuple[Classifier, str]:
    """``load_classifier`` and the SHA-256 of the bytes it was read from (what a rejection head records of F)."""
    payload, digest = load_checkpoint_with_digest(path)
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a classifier checkpoint of this project (no arch/state_dict)")
    arch, state = payload["arch"], payload["state_dict"]
    if arch not in ARCH_NAMES:
        raise CheckpointError(f"{path} holds an unknown classifier arch {arch!r}; rebuild it with `dvc repro`")
    num_classes = payload.get("num_classes")
    if num_classes is None:
        head_weight = state.get(architecture_layout(arch).head + ".weight")
        if head_weight is None:
            raise CheckpointError(f"{path} has no classification layer weight; rebuild it with `dvc repro`")
        num_classes = int(head_weight.shape[0])
    model = build_classifier(arch, int(num_classes))
    load_state_dict_checked(model.core(), state, str(path))
    model.set_feature_layer(feature_layer).set_max_grid(max_grid)
    model.image_size = int(payload.get("image_size", 32))  # saved before sizes were stored: 32 px, as all were
    if arch.startswith(TORCHVISION_PREFIX):  # (the CIFAR-stem resnet50 / densenet121 never resized)
        # saved before input sizes were stored: resized to its weights' size, as every torchvision model then was
        model.input_size = payload.get("input_size", torchvision_layout(arch.removeprefix(TORCHVISION_PREFIX))
                                       .input_size)
    model.eval().requires_grad_(False)
    return model, digest
