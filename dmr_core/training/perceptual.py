"""A perceptual loss for the generator, measured by the frozen classifier DMR's head reads.

DMR's rejection head sees images only through the classifier F. A generator trained on squared error
alone makes reconstructions G(E(x)) whose F-features differ from those of photographs (blur removes the
texture F's early layers respond to), and the head learns that difference instead of the marginal
content (README, "Results of the default run"). This loss trains the decoder to make G(E(x)) look like x *to F*:

    d(x, x̂) = Σ_l 1/(H_l W_l) Σ_{h,w} ‖ φ̂_l(x)_{hw} − φ̂_l(x̂)_{hw} ‖²

with φ̂_l the activations of F's stage l, unit-normalised along channels at each position: the LPIPS
distance of Zhang et al. 2018 (eq. 1) with unit channel weights and F in place of AlexNet/VGG. F stays
frozen; only the generator's gradient flows through it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from ..device import place_images, place_model
from ..errors import ParamsError
from ..nets.checkpoints import load_checkpoint, save_checkpoint
from ..nets.classifier import load_classifier
from ..nets.classifier_base import Classifier

UNUSED_MARKER = {"perceptual_net": None}


def default_layers(classifier: Classifier) -> tuple[str, ...]:
    """The output of each resolution stage: layer1..3 of a CIFAR ResNet, the last block of each third of a WRN,
    the stages of ResNet-50 / DenseNet-121; a torchvision model names none (params refuse the term for it)."""
    layers = classifier.stage_layers()
    if not layers:
        raise ParamsError(f"the perceptual term needs the classifier's resolution stages, which "
                          f"{type(classifier.core()).__name__} does not name; set generator.perceptual_weight: 0 "
                          "or use a built-in classifier.arch")
    return layers


class ClassifierPerceptualLoss(nn.Module):
    """d(x, x̂) above, averaged over the first ``images_per_batch`` images of each batch.

    Running F forward and backward costs about four times a step of the small VAE on a CPU, so only a
    slice of each batch is measured; its gradient is an unbiased estimate of the full batch's."""

    def __init__(self, classifier: Classifier, layers: tuple[str, ...] | None = None,
                 images_per_batch: int = 32) -> None:
        super().__init__()
        if images_per_batch < 1:
            raise ValueError(f"images_per_batch must be >= 1; got {images_per_batch}")
        # channels-last as in feature extraction (faster convolutions); .to(device) keeps the layout
        self.classifier = place_model(classifier, next(classifier.parameters()).device).eval().requires_grad_(False)
        self.layers = tuple(layers or default_layers(classifier))
        self.images_per_batch = images_per_batch
        modules = dict(self.classifier.core().named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"the classifier has no module(s) {missing}; choose from {sorted(modules)[:12]}…")
        self._activations: dict[str, Tensor] = {}
        for name in self.layers:
            modules[name].register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self._activations[name] = output
        return hook

    def train(self, mode: bool = True) -> ClassifierPerceptualLoss:
        super().train(mode)
        self.classifier.eval()  # batch-norm statistics of F must never move
        return self

    def _stage_features(self, images: Tensor) -> list[Tensor]:
        self._activations.clear()
        self.classifier(place_images(images, images.device))  # only the hooked stage outputs are read
        return [nnf.normalize(self._activations[name].float(), dim=1) for name in self.layers]

    def forward(self, reconstructions: Tensor, images: Tensor) -> Tensor:
        n = min(self.images_per_batch, len(images))
        with torch.no_grad():
            targets = self._stage_features(images[:n])
        outputs = self._stage_features(reconstructions[:n])
        return sum((out - target).pow(2).sum(1).mean() for out, target in zip(outputs, targets))


def write_perceptual_net(classifier_checkpoint: str | Path, weight: float, path: str | Path) -> None:
    """What the generator's perceptual term measures through: the classifier checkpoint when ``weight`` > 0,
    else a fixed marker whose bytes do not depend on the classifier, so that retraining F does not retrain a
    generator that never looks at it."""
    if weight > 0:
        shutil.copyfile(classifier_checkpoint, path)
    else:
        save_checkpoint(UNUSED_MARKER, path)


def load_perceptual_loss(path: str | Path, images_per_batch: int) -> ClassifierPerceptualLoss | None:
    """The perceptual loss through the network ``write_perceptual_net`` stored, or None where it stored none."""
    payload = load_checkpoint(path)
    if payload == UNUSED_MARKER:
        return None
    return ClassifierPerceptualLoss(load_classifier(path), images_per_batch=images_per_batch)
