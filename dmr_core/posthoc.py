"""Post-hoc OOD detectors on the same frozen classifier, all from pytorch-ood (paper Table 1 and later).

Each detector scores one stored representation (logits, penultimate vector, or the last feature map);
ODIN, which perturbs its input along the loss gradient, scores images. Detectors that need fitting
fit on the ID **training** split only (the authors' notebooks fit on the test split; we do not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_ood.detector import (
    ASH,
    DICE,
    KNN,
    ODIN,
    EnergyBased,
    Entropy,
    KLMatching,
    Mahalanobis,
    MaxLogit,
    MaxSoftmax,
    ReAct,
    ViM,
)
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from .classifier import CifarClassifier
from .device import place_images, place_model, resolve_device
from .training import to_float_images

TABLE1_DETECTORS = ("MSP", "ODIN", "Mahalanobis", "Energy", "Entropy", "MaxLogit", "KL-Matching", "ViM")
EXTRA_DETECTORS = ("KNN", "ReAct", "DICE", "ASH")
ALL_DETECTORS = TABLE1_DETECTORS + EXTRA_DETECTORS


@dataclass(frozen=True)
class PosthocSettings:
    vim_dim: int = 32
    knn_k: int = 50
    react_percentile: float = 0.9
    dice_p: float = 0.9
    ash_percentile: float = 0.9
    odin_eps: float = 0.0014
    odin_temperature: float = 1000.0


@dataclass
class FittedDetector:
    """A detector and the representation it reads: logits, penultimate, feature_map or images."""

    name: str
    representation: str
    score: Callable[[Tensor], Tensor]


def fit_detectors(
    model: CifarClassifier, train: dict[str, np.ndarray], train_labels: np.ndarray, settings: PosthocSettings,
    names: tuple[str, ...] = ALL_DETECTORS, device: torch.device | None = None,
) -> list[FittedDetector]:
    """Build and fit the named pytorch-ood detectors on the ID training representations.

    The detectors that read stored representations run on the CPU (they are cheap, and KNN's index is
    scikit-learn's); ODIN, which back-propagates through the classifier for every image, runs on ``device``
    (default: ``resolve_device()``), in float32: its temperature-1000 softmax and input-gradient sign are
    what it measures, so it gets no mixed precision."""
    labels = torch.from_numpy(train_labels.astype(np.int64))
    head = model.classifier_head()
    w, b = head.weight.detach(), head.bias.detach()

    def pooled_head(feature_maps: Tensor) -> Tensor:
        return head(model.penultimate(feature_maps))

    def train_tensor(key: str) -> Tensor:
        return torch.from_numpy(train[key]).float()

    built: list[FittedDetector] = []
    for name in names:
        if name == "MSP":
            built.append(FittedDetector(name, "logits", MaxSoftmax(None).predict_logits))
        elif name == "Energy":
            built.append(FittedDetector(name, "logits", EnergyBased(None).predict_logits))
        elif name == "Entropy":
            built.append(FittedDetector(name, "logits", Entropy(None).predict_logits))
        elif name == "MaxLogit":
            built.append(FittedDetector(name, "logits", MaxLogit(None).predict_logits))
        elif name == "KL-Matching":
            det = KLMatching(None).fit_logits(train_tensor("logits"), labels)
            built.append(FittedDetector(name, "logits", det.predict_logits))
        elif name == "Mahalanobis":
            det = Mahalanobis(None).fit_features(train_tensor("penultimate"), labels)
            built.append(FittedDetector(name, "penultimate", det.predict_features))
        elif name == "ViM":
            det = ViM(None, d=settings.vim_dim, w=w, b=b).fit_features(train_tensor("penultimate"), labels)
            built.append(FittedDetector(name, "penultimate", det.predict_features))
        elif name == "KNN":
            det = KNN(None, k=settings.knn_k).fit_features(train_tensor("penultimate"), labels)
            built.append(FittedDetector(name, "penultimate", det.predict_features))
        elif name == "DICE":
            det = DICE(None, w=w, b=b, p=settings.dice_p).fit_features(train_tensor("penultimate"), labels)
            built.append(FittedDetector(name, "penultimate", det.predict_features))
        elif name == "ReAct":
            det = ReAct(None, head=pooled_head, percentile=settings.react_percentile)
            det.fit_feature_maps(feature_maps_of(train["feature_map"], model.feature_channels), labels)
            built.append(FittedDetector(name, "feature_map", det.predict_feature_maps))
        elif name == "ASH":
            det = ASH(None, head=pooled_head, variant="ash-s", percentile=settings.ash_percentile)
            built.append(FittedDetector(name, "feature_map", det.predict_feature_maps))
        elif name == "ODIN":
            built.append(FittedDetector(name, "images", _odin_scorer(model, settings, device or resolve_device())))
        else:
            raise ValueError(f"unknown detector {name!r}; choose from {ALL_DETECTORS}")
    return built


def _odin_scorer(model: CifarClassifier, settings: PosthocSettings, device: torch.device) -> Callable[[Tensor], Tensor]:
    det = ODIN(place_model(model.for_inference(), device), eps=settings.odin_eps, temperature=settings.odin_temperature)

    def score(images: Tensor) -> Tensor:
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would round ODIN's input gradient to 10 bits
        try:
            return det.predict(place_images(images, device)).cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    return score


def feature_maps_of(flat: np.ndarray, channels: int) -> Tensor:
    """Stored flattened feature maps (N×C·H·W) back to N×C×H×W float tensors."""
    side = int(round((flat.shape[1] / channels) ** 0.5))
    return torch.from_numpy(flat).float().view(len(flat), channels, side, side)


def score_set(
    detector: FittedDetector, representations: dict[str, np.ndarray], images: np.ndarray | None,
    channels: int, batch_size: int = 500,
) -> np.ndarray:
    """Outlier scores (higher = more OOD) of one set, batched."""
    if detector.representation == "images":
        if images is None:
            raise ValueError(f"{detector.name} needs the images of the set")
        loader = DataLoader(TensorDataset(torch.from_numpy(images)), batch_size=batch_size)
        parts = [detector.score(to_float_images(x)).detach() for (x,) in tqdm(loader, desc=detector.name, leave=False)]
    else:
        values = representations[detector.representation]
        parts = []
        with torch.inference_mode():
            for start in range(0, len(values), batch_size * 8):
                chunk = values[start:start + batch_size * 8]
                x = (feature_maps_of(chunk, channels) if detector.representation == "feature_map"
                     else torch.from_numpy(chunk).float())
                parts.append(detector.score(x))
    return torch.cat(parts).float().cpu().numpy()
