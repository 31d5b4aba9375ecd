"""The detector a run trains, as one object that scores new images: the frozen classifier F, the rejection head B
and the threshold of stage eval, and, when the run has one, the combined score of stage combine.

Scores are computed as the pipeline computes them: F's representations through ``extract_features`` (the features
stage's code path), B through ``DMRDetector``, the combined score's post-hoc detector fitted by the library's
``fit_detectors`` on the ID-train representations of ``data/features.zarr`` (as stage baselines fits it; KNN's
fit is an index of 50,000 64-d vectors, about a second, so it is refitted when the detector is loaded instead of
being stored) and both scores standardised with the statistics stage combine stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.artifacts import open_zarr
from ..detectors.combine import CombinedScore
from ..detectors.dmr import DMRDetector
from ..detectors.posthoc import FittedDetector, PosthocSettings, fit_detectors, score_set
from ..detectors.threshold import THRESHOLD_RULE, is_ood
from ..errors import CheckpointError, DataError
from ..nets.checkpoints import load_checkpoint
from ..nets.classifier import CifarClassifier, load_classifier
from ..nets.encoder import RepresentationEncoder, representation_encoder
from ..nets.features import extract_features
from ..nets.rejection_head import RejectionHead, load_head
from .run import RunArtifacts

RUN_FIRST = "run `dvc repro` first to train the detector"


class NoTrainedRun(DataError):
    """A trained run's artifact is missing or predates what scoring needs; the message says which and what to do."""


@dataclass
class CombinedPart:
    """The combined score of a run: its post-hoc detector (fitted), the two standardisations and its threshold."""

    method: str
    detector: FittedDetector
    combine: CombinedScore
    threshold: float


def class_names(classifier_path: Path, train_set: Path | None) -> list[str] | None:
    """F's class names: from its checkpoint if it carries them, else from the ID training set's attrs, else None
    (the caller then shows class indices)."""
    payload = load_checkpoint(classifier_path)
    if isinstance(payload.get("class_names"), (list, tuple)):
        return [str(name) for name in payload["class_names"]]
    if train_set is not None and (train_set / "zarr.json").is_file():
        names = open_zarr(train_set, "the ID training set (stage data)").attrs.get("class_names")
        if names:
            return [str(name) for name in names]
    return None


def _threshold(path: Path, what: str) -> tuple[float, dict]:
    if not (path / "zarr.json").is_file():
        raise NoTrainedRun(f"no trained run here: {path} ({what}) is missing; {RUN_FIRST}")
    attrs = dict(open_zarr(path, what).attrs)
    if "threshold" not in attrs:
        raise NoTrainedRun(f"{path} holds no threshold (written before thresholds were stored); run `dvc repro` "
                           f"to rebuild it")
    return float(attrs["threshold"]), attrs


def fit_combined(classifier: CifarClassifier, artifacts: RunArtifacts,
                 device: torch.device | None = None) -> CombinedPart | None:
    """The run's combined score, its detector fitted on the ID-train representations; None when the run has none."""
    if artifacts.combined is None or artifacts.features is None or not (artifacts.combined / "zarr.json").is_file():
        return None
    threshold, attrs = _threshold(artifacts.combined, "the combined score (stage combine)")
    if not attrs.get("method"):
        return None
    representation = attrs["representation"]
    train = open_zarr(artifacts.features, "the classifier features (stage features)")["id_train"]
    fit_on = {} if representation == "images" else {representation: np.asarray(train[representation][:])}
    (detector,) = fit_detectors(classifier, fit_on, np.asarray(train["labels"][:]),
                                PosthocSettings(**attrs["settings"]), (attrs["detector"],), device)
    return CombinedPart(attrs["method"], detector, CombinedScore.from_attrs(attrs), threshold)


class TrainedDetector:
    """F + B (+ the combined score): ``score(images)`` gives per image the predicted class, its confidence, the
    DMR score and the OOD decision at the run's threshold (and the same for the combined score)."""

    def __init__(self, classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
                 names: list[str] | None = None, combined: CombinedPart | None = None, batch_size: int = 500,
                 device: torch.device | None = None) -> None:
        self.classifier, self.head, self.feature, self.threshold = classifier, head, feature, threshold
        self.class_names, self.combined = names, combined
        self.batch_size, self.device = batch_size, device
        self.detector = DMRDetector(head, encoder=self.encoder())

    @classmethod
    def load(cls, artifacts: RunArtifacts, with_combined: bool = True, batch_size: int = 500,
             device: torch.device | None = None) -> TrainedDetector:
        """The run's detector; a :class:`NoTrainedRun` in one line when an artifact it needs is missing."""
        for path, what in ((artifacts.classifier, "the classifier"), (artifacts.head, "the rejection head")):
            if not path.is_file():
                raise NoTrainedRun(f"no trained run here: {path} ({what}) is missing; {RUN_FIRST}")
        threshold, _ = _threshold(artifacts.dmr_scores, "DMR's scores (stage eval)")
        try:
            classifier = load_classifier(artifacts.classifier)
            head, feature = load_head(artifacts.head)
        except CheckpointError as err:
            raise NoTrainedRun(str(err)) from None
        combined = fit_combined(classifier, artifacts, device) if with_combined else None
        return cls(classifier, head, feature, threshold, class_names(artifacts.classifier, artifacts.train_set),
                   combined, batch_size, device)

    def encoder(self) -> RepresentationEncoder:
        """images → the representation B reads, as the features stage computes it (``DMRDetector``'s encoder)."""
        return representation_encoder(self.classifier, self.feature, batch_size=self.batch_size, device=self.device)

    def describe(self) -> dict:
        """What decides the outputs: the representation, thresholds, rule and class names."""
        return {"source": "trained run", "feature": self.feature, "threshold": self.threshold,
                "threshold_rule": THRESHOLD_RULE, "class_names": self.class_names,
                "combined": None if self.combined is None else
                {"method": self.combined.method, "threshold": self.combined.threshold}}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per image of a uint8 N×32×32×3 batch: ``predicted`` (class index), ``confidence`` (max softmax),
        ``dmr_score``, ``is_ood`` and, with a combined score, ``combined_score`` and ``combined_is_ood``."""
        representations = extract_features(self.classifier, images, self.batch_size, desc="score",
                                           device=self.device)
        probabilities = torch.softmax(torch.from_numpy(representations["logits"]), dim=1)
        confidence, predicted = probabilities.max(dim=1)
        dmr = self.detector.scores(representations[self.feature])
        out = {"predicted": predicted.numpy(), "confidence": confidence.numpy(), "dmr_score": dmr,
               "is_ood": is_ood(dmr, self.threshold)}
        if self.combined is not None:
            posthoc = score_set(self.combined.detector, representations, images, self.batch_size)
            combined = self.combined.combine(dmr, posthoc)
            out.update(combined_score=combined, combined_is_ood=is_ood(combined, self.combined.threshold))
        return out
