"""Post-hoc OOD detectors on the same frozen classifier, all from pytorch-ood (paper Table 1 and later).

Each detector scores one stored representation (logits, penultimate vector, or the last feature map);
ODIN, which perturbs its input along the loss gradient, scores images. Detectors that need fitting
fit on the ID **training** split only (the authors' notebooks fit on the test split; we do not).
``DETECTORS`` is the one table of them: adding a detector means adding an entry; params validation and the
report read the names from it. An entry with a ``Servable`` form can be part of a served and exported combined
score: stage combine stores the arrays it keeps, and the torch module built from them scores new images without
refitting (KNN's index becomes ``knn.KNNScore``; the logit scores are pytorch-ood's own functions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..data.streams import batches, take_rows
from ..device import place_images, place_model, resolve_device
from ..images import to_float_images
from ..nets.classifier_base import Classifier
from .knn import KNNScore, unit_rows


def _ood():
    """pytorch-ood's detectors, imported when a detector is built: the import (with scipy and torchvision) costs
    seconds, and every stage reads this table through the params, most without building a detector."""
    from pytorch_ood import detector

    return detector


@dataclass(frozen=True)
class PosthocSettings:
    """params.yaml section ``baselines``: the detectors' own settings."""

    vim_dim: int = 32
    knn_k: int = 50
    react_percentile: float = 0.9
    dice_p: float = 0.9
    ash_percentile: float = 0.9
    odin_eps: float = 0.0014
    odin_temperature: float = 1000.0


@dataclass
class FittedDetector:
    """A detector and the representation it reads: logits, penultimate, feature_map or images; ``module`` is its
    torch module when it was rebuilt from stored state (``served_detector``)."""

    name: str
    representation: str
    score: Callable[[Tensor], Tensor]
    module: nn.Module | None = None


@dataclass(frozen=True)
class FitContext:
    """What a detector may fit on: the classifier and its ID-training representations and labels."""

    model: Classifier
    train: dict[str, np.ndarray]
    labels: Tensor
    settings: PosthocSettings
    device: torch.device

    def tensor(self, representation: str) -> Tensor:
        return torch.from_numpy(self.train[representation]).float()

    @property
    def weight(self) -> Tensor:
        return self.model.classifier_head().weight.detach()

    @property
    def bias(self) -> Tensor:
        return self.model.classifier_head().bias.detach()

    def pooled_head(self, feature_maps: Tensor) -> Tensor:
        """F's logits from its last feature map (what ReAct and ASH rectify or prune before); a one-line error
        where the stored feature map does not pool into the classification layer."""
        return self.model.logits_from_feature_map(feature_maps)


State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Servable:
    """A detector's form for serving and export: ``state`` the arrays its fit keeps (from the ID-train
    representations), ``module`` the torch module that scores its representation from them."""

    state: Callable[[dict[str, np.ndarray], PosthocSettings], State]
    module: Callable[[State, PosthocSettings], nn.Module]


class LogitScore(nn.Module):
    """A stateless pytorch-ood score of the logits (``score(logits) → N``) as a module."""

    def __init__(self, score: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.score = score

    def forward(self, logits: Tensor) -> Tensor:
        return self.score(logits.float())


def _logit_score(name: str) -> Servable:
    return Servable(lambda train, settings: {},
                    lambda state, settings: LogitScore(getattr(_ood(), name).score))


KNN_SERVABLE = Servable(
    lambda train, settings: {"reference": unit_rows(train["penultimate"]).numpy()},
    lambda state, settings: KNNScore(torch.from_numpy(np.asarray(state["reference"])), settings.knn_k))


@dataclass(frozen=True)
class DetectorSpec:
    representation: str
    build: Callable[[FitContext], Callable[[Tensor], Tensor]]
    in_paper_table1: bool = False
    servable: Servable | None = None


def _odin(ctx: FitContext) -> Callable[[Tensor], Tensor]:
    """ODIN on ``ctx.device`` in float32: its temperature-1000 softmax and input-gradient sign are what it
    measures, so it gets no mixed precision and no TF32 convolutions."""
    s = ctx.settings
    det = _ood().ODIN(place_model(ctx.model.for_inference(), ctx.device), eps=s.odin_eps,
                      temperature=s.odin_temperature)

    def score(images: Tensor) -> Tensor:
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would round ODIN's input gradient to 10 bits
        try:
            return det.predict(place_images(images, ctx.device)).cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    return score


def _react(ctx: FitContext) -> Callable[[Tensor], Tensor]:
    det = _ood().ReAct(None, head=ctx.pooled_head, percentile=ctx.settings.react_percentile)
    det.fit_feature_maps(ctx.tensor("feature_map"), ctx.labels)
    return det.predict_feature_maps


DETECTORS: dict[str, DetectorSpec] = {
    "MSP": DetectorSpec("logits", lambda ctx: _ood().MaxSoftmax(None).predict_logits, True,
                        _logit_score("MaxSoftmax")),
    "ODIN": DetectorSpec("images", _odin, True),
    "Mahalanobis": DetectorSpec(
        "penultimate", lambda ctx: _ood().Mahalanobis(None).fit_features(ctx.tensor("penultimate"), ctx.labels)
        .predict_features, True),
    "Energy": DetectorSpec("logits", lambda ctx: _ood().EnergyBased(None).predict_logits, True,
                           _logit_score("EnergyBased")),
    "Entropy": DetectorSpec("logits", lambda ctx: _ood().Entropy(None).predict_logits, True, _logit_score("Entropy")),
    "MaxLogit": DetectorSpec("logits", lambda ctx: _ood().MaxLogit(None).predict_logits, True,
                             _logit_score("MaxLogit")),
    "KL-Matching": DetectorSpec(
        "logits", lambda ctx: _ood().KLMatching(None).fit_logits(ctx.tensor("logits"), ctx.labels).predict_logits,
        True),
    "ViM": DetectorSpec(
        "penultimate", lambda ctx: _ood().ViM(None, d=ctx.settings.vim_dim, w=ctx.weight, b=ctx.bias)
        .fit_features(ctx.tensor("penultimate"), ctx.labels).predict_features, True),
    "KNN": DetectorSpec(
        "penultimate", lambda ctx: _ood().KNN(None, k=ctx.settings.knn_k)
        .fit_features(ctx.tensor("penultimate"), ctx.labels).predict_features, servable=KNN_SERVABLE),
    "ReAct": DetectorSpec("feature_map", _react),
    "DICE": DetectorSpec(
        "penultimate", lambda ctx: _ood().DICE(None, w=ctx.weight, b=ctx.bias, p=ctx.settings.dice_p)
        .fit_features(ctx.tensor("penultimate"), ctx.labels).predict_features),
    "ASH": DetectorSpec(
        "feature_map", lambda ctx: _ood().ASH(None, head=ctx.pooled_head, variant="ash-s",
                                              percentile=ctx.settings.ash_percentile).predict_feature_maps),
}


def fit_detectors(
    model: Classifier, train: dict[str, np.ndarray], train_labels: np.ndarray, settings: PosthocSettings,
    names: tuple[str, ...] = tuple(DETECTORS), device: torch.device | None = None,
) -> list[FittedDetector]:
    """Build and fit the named detectors on the ID training representations. The detectors that read stored
    representations run on the CPU (they are cheap, and KNN's index is scikit-learn's); ODIN, which
    back-propagates through the classifier for every image, runs on ``device`` (default: ``resolve_device()``)."""
    unknown = [name for name in names if name not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; choose from {list(DETECTORS)}")
    ctx = FitContext(model, train, torch.from_numpy(train_labels.astype(np.int64)), settings,
                     device or resolve_device())
    return [FittedDetector(name, DETECTORS[name].representation, DETECTORS[name].build(ctx)) for name in names]


def servable_names() -> list[str]:
    """The detectors whose combined score can be served from stored state and exported."""
    return [name for name, spec in DETECTORS.items() if spec.servable is not None]


def served_detector(name: str, state: State, settings: PosthocSettings) -> FittedDetector:
    """A detector rebuilt from the state stage combine stored (no refit), behind ``FittedDetector``'s interface."""
    module = DETECTORS[name].servable.module(state, settings).eval()

    def score(values: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(values)

    return FittedDetector(name, DETECTORS[name].representation, score, module)


def score_set(
    detector: FittedDetector, representations: dict[str, np.ndarray], images: Any,
    batch_size: int = 500,
) -> np.ndarray:
    """Outlier scores (higher = more OOD) of one set, batched; ``images`` (an array or a stored set, read a batch
    at a time) are read only by a detector that scores images."""
    if detector.representation == "images":
        if images is None:
            raise ValueError(f"{detector.name} needs the images of the set")
        parts = [detector.score(to_float_images(torch.from_numpy(x))).detach()
                 for x in tqdm(batches(images, batch_size), desc=detector.name, leave=False,
                               total=-(-len(images) // batch_size))]
    else:
        values = representations[detector.representation]
        with torch.inference_mode():
            parts = [detector.score(torch.from_numpy(values[start:start + batch_size * 8]).float())
                     for start in range(0, len(values), batch_size * 8)]
    return torch.cat(parts).float().cpu().numpy()


@dataclass(frozen=True)
class ScoringSet:
    """One image set to score: its stored representations (a mapping name → array-like, e.g. a zarr group) and
    its images (an array-like, read only when a detector scores images)."""

    representations: Any
    images: Any


class RowSelection:
    """Rows ``rows`` of an array-like, read (those rows only) when first indexed, so unread when no detector
    needs them."""

    def __init__(self, array: Any, rows: np.ndarray) -> None:
        self.array, self.rows, self._read = array, rows, None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        if self._read is None:
            self._read = take_rows(self.array, self.rows)
        return self._read[key]


def score_sets(detectors: list[FittedDetector], sets: dict[str, ScoringSet], batch_size: int
               ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """({detector: {set: scores}}, {detector: seconds spent scoring}); each set's representations are read once."""
    needed = {d.representation for d in detectors}
    scores: dict[str, dict[str, np.ndarray]] = {d.name: {} for d in detectors}
    seconds = {d.name: 0.0 for d in detectors}
    for set_name, scoring_set in sets.items():
        representations = {r: np.asarray(scoring_set.representations[r][:]) for r in needed if r != "images"}
        images = scoring_set.images if "images" in needed else None
        for det in detectors:
            start = time.perf_counter()
            scores[det.name][set_name] = score_set(det, representations, images, batch_size)
            seconds[det.name] += time.perf_counter() - start
    return scores, seconds


def evaluate_detectors(scores: dict[str, dict[str, np.ndarray]], ood_sets: list[str]) -> dict[str, dict]:
    """{detector: OOD metrics per set and mean} from each detector's ``id_test`` and OOD-set scores."""
    from ..evaluation.metrics import evaluate_scores

    return {name: evaluate_scores(per_set["id_test"], {s: per_set[s] for s in ood_sets})
            for name, per_set in scores.items()}
