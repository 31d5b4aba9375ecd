"""The detector a run trains, as one object that scores new images: the frozen classifier F, the rejection head B
and the thresholds of stage eval, and, when the run has one, the combined score of stage combine.

Scores are computed as the pipeline computes them: F's representations through ``extract_features`` (the features
stage's code path), B through ``DMRDetector``, the combined score's post-hoc detector rebuilt from the state stage
combine stored (for KNN its unit-normalised ID-train reference vectors; nothing is refitted) or, for a detector
without a servable form, fitted by the library's ``fit_detectors`` on the ID-train representations as stage
baselines fits it; both scores standardised with the statistics stage combine stored.

The decision (``is_ood``) is one detector's at one operating point: ``keep``, the share of ID test images kept (a
threshold stage eval and stage combine stored, ``eval.keep_rates``), and ``decision``, ``dmr`` or ``combined``
(``auto``: the one with the higher near-OOD mean AUROC in the run, else the higher mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_ood.api import Detector
from torch import Tensor

from ..data.artifacts import open_zarr
from ..data.encoding import is_as_stored
from ..detectors.combine import CombinedDetector, CombinedScore
from ..detectors.dmr import DMRDetector
from ..detectors.posthoc import (DETECTORS, FittedDetector, PosthocSettings, fit_detectors, score_set,
                                 served_detector)
from ..detectors.threshold import ID_KEPT, THRESHOLD_RULE, is_ood, keep_key
from ..errors import CheckpointError, DataError
from ..evaluation.metrics import evaluate_scores
from ..evaluation.summary import summary_aurocs
from ..images import to_float_images
from ..nets.checkpoints import load_checkpoint
from ..nets.classifier import CifarClassifier, load_classifier_with_digest
from ..nets.encoder import RepresentationEncoder, as_uint8_images, representation_encoder
from ..nets.features import extract_features
from ..nets.rejection_head import LoadedHead, RejectionHead, load_head
from .run import RunArtifacts

RUN_FIRST = "run `dvc repro` first to train the detector"
DECISIONS = ("auto", "dmr", "combined")


class NoTrainedRun(DataError):
    """A trained run's artifact is missing or predates what scoring needs; the message says which and what to do."""


@dataclass
class CombinedPart:
    """The combined score of a run: its post-hoc detector, the two standardisations, its thresholds per share of ID
    images kept, its summary AUROCs, and whether the detector was rebuilt from stored state (else refitted)."""

    method: str
    detector: FittedDetector
    combine: CombinedScore
    thresholds: dict[str, float]
    summary: dict[str, float]
    stored: bool
    settings: PosthocSettings


class FittedOnImages(Detector):
    """A fitted post-hoc detector as a pytorch-ood ``Detector`` over images: ``predict(x)`` scores F's
    representation of x (computed by ``encoder``, as the features stage computes it), or x itself for a detector
    that reads images."""

    def __init__(self, fitted: FittedDetector, encoder: RepresentationEncoder) -> None:
        self.fitted, self.encoder = fitted, encoder

    def predict(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            if self.fitted.representation == "images":
                return self.fitted.score(to_float_images(torch.from_numpy(as_uint8_images(x))))
            return self.fitted.score(torch.from_numpy(self.encoder.all(x)[self.fitted.representation]).float())


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


def _scores_attrs(path: Path, what: str) -> tuple[dict[str, float], dict]:
    """({keep key: threshold}, attrs) of a scores artifact; thresholds written before operating points were
    stored give the 95 % one only."""
    if not (path / "zarr.json").is_file():
        raise NoTrainedRun(f"no trained run here: {path} ({what}) is missing; {RUN_FIRST}")
    attrs = dict(open_zarr(path, what).attrs)
    if "threshold" not in attrs:
        raise NoTrainedRun(f"{path} holds no threshold (written before thresholds were stored); run `dvc repro` "
                           f"to rebuild it")
    thresholds = {str(k): float(v) for k, v in (attrs.get("thresholds") or {}).items()}
    return thresholds or {keep_key(ID_KEPT): float(attrs["threshold"])}, attrs


MIXED_RUN = ("the run's artifacts are not one version: {newer} is not the one {older} was made from (a `dvc repro` "
             "under way, or files from different runs); score again once `dvc repro` has finished")


def check_one_version(head: LoadedHead, classifier_sha256: str, artifacts: RunArtifacts, dmr_attrs: dict) -> None:
    """Refuse, in one line, a run read mid-update: the head must record the classifier file's digest, and DMR's
    thresholds the head's (artifacts from before digests were recorded are taken as they are)."""
    if head.classifier_sha256 not in (None, classifier_sha256):
        raise NoTrainedRun(MIXED_RUN.format(newer=artifacts.classifier, older=artifacts.head))
    if dmr_attrs.get("head_sha256") not in (None, head.sha256):
        raise NoTrainedRun(MIXED_RUN.format(newer=artifacts.head, older=artifacts.dmr_scores))


def check_head_fits(classifier: CifarClassifier, head: LoadedHead, artifacts: RunArtifacts) -> None:
    """Refuse a head whose input size is not that of the representation F gives (one forward pass of one image)."""
    with torch.inference_mode():
        probe = classifier.representations(torch.zeros(1, 3, classifier.image_size, classifier.image_size))
    if head.feature not in probe:
        raise NoTrainedRun(f"{artifacts.head} reads {head.feature!r}, which the classifier does not give; run "
                           "`dvc repro`")
    size = int(np.prod(probe[head.feature].shape[1:]))
    if size != head.head.config["in_features"]:
        raise NoTrainedRun(f"{artifacts.head} reads {head.head.config['in_features']} values of {head.feature}, but "
                           f"{artifacts.classifier} at layer {head.feature_layer!r} gives {size}; the two are not "
                           "from one run: run `dvc repro`")


def load_combined(classifier: CifarClassifier, artifacts: RunArtifacts,
                  device: torch.device | None = None, head_sha256: str | None = None) -> CombinedPart | None:
    """The run's combined score; None when the run has none. With ``head_sha256``, a combined score made with
    another head is refused (a run read mid-update)."""
    if artifacts.combined is None or not (artifacts.combined / "zarr.json").is_file():
        return None
    thresholds, attrs = _scores_attrs(artifacts.combined, "the combined score (stage combine)")
    if not attrs.get("method"):
        return None
    if head_sha256 is not None and attrs.get("head_sha256") not in (None, head_sha256):
        raise NoTrainedRun(MIXED_RUN.format(newer=artifacts.head, older=artifacts.combined))
    group = open_zarr(artifacts.combined, "the combined score (stage combine)")
    name, representation = attrs["detector"], attrs["representation"]
    settings = PosthocSettings(**attrs["settings"])
    if name not in DETECTORS:
        raise NoTrainedRun(f"{artifacts.combined} names detector {name!r}, which this version does not have; run "
                           f"`dvc repro` to rebuild it")
    stored = bool(attrs.get("servable")) and "detector_state" in group and DETECTORS[name].servable is not None
    if stored:
        state_group = group["detector_state"]
        state = {key: np.asarray(state_group[key][:]) for key in state_group.array_keys()}
        detector = served_detector(name, state, settings)
    else:
        if artifacts.features is None:
            return None
        train = open_zarr(artifacts.features, "the classifier features (stage features)")["id_train"]
        fit_on = {} if representation == "images" else {representation: np.asarray(train[representation][:])}
        (detector,) = fit_detectors(classifier, fit_on, np.asarray(train["labels"][:]), settings, (name,), device)
    summary = _summary(group, attrs)
    return CombinedPart(attrs["method"], detector, CombinedScore.from_attrs(attrs), thresholds, summary, stored,
                        settings)


def _summary(group, attrs: dict) -> dict[str, float]:
    """The summary AUROCs a scores artifact's stage stored, else computed from its stored scores."""
    if isinstance(attrs.get("summary"), dict):
        return {str(k): float(v) for k, v in attrs["summary"].items()}
    sets = [s for s in attrs["ood_sets"] if not is_as_stored(s)]
    return summary_aurocs(evaluate_scores(np.asarray(group["id_test"][:]),
                                          {s: np.asarray(group["ood"][s][:]) for s in sets}))


def choose_decision(wanted: str, dmr_summary: dict[str, float], combined: CombinedPart | None) -> tuple[str, str]:
    """(dmr | combined, why): ``auto`` takes the detector with the higher near-OOD mean AUROC in the run (the
    mean over sets when the run has no near-OOD set)."""
    if wanted not in DECISIONS:
        raise DataError(f"unknown detector {wanted!r}; choose from {', '.join(DECISIONS)}")
    if wanted == "combined" and combined is None:
        raise NoTrainedRun("the run has no combined score (combine.detector: none, or --no-combined); use "
                           "--detector dmr")
    if wanted != "auto":
        return wanted, "as asked"
    if combined is None:
        return "dmr", "the run has no combined score"
    key = "near_mean" if "near_mean" in dmr_summary and "near_mean" in combined.summary else "mean"
    pick = "combined" if combined.summary[key] > dmr_summary[key] else "dmr"
    return pick, (f"higher {key.replace('_', '-')} AUROC in this run: {combined.method} "
                  f"{combined.summary[key]:.2f}, DMR {dmr_summary[key]:.2f}")


def _pick(thresholds: dict[str, float], keep: float, path: Path) -> float:
    key = keep_key(keep)
    if key not in thresholds:
        raise DataError(f"the run stores no threshold keeping {keep:g} of ID images ({path}); choose --keep from "
                        f"{', '.join(sorted(thresholds))}, or add it to eval.keep_rates and run `dvc repro`")
    return thresholds[key]


class TrainedDetector:
    """F + B (+ the combined score): ``score(images)`` gives per image the predicted class, its confidence, the
    DMR score and its decision, the combined score and its decision when the run has one, and ``is_ood``, the
    decision of the chosen detector, all at the chosen share of ID images kept."""

    def __init__(self, classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
                 names: list[str] | None = None, combined: CombinedPart | None = None, batch_size: int = 500,
                 device: torch.device | None = None, keep: float = ID_KEPT, decision: str = "dmr",
                 decision_reason: str = "as asked", thresholds: dict[str, float] | None = None) -> None:
        self.classifier, self.head, self.feature, self.threshold = classifier, head, feature, threshold
        self.class_names, self.combined = names, combined
        self.batch_size, self.device = batch_size, device
        self.keep, self.decision, self.decision_reason = keep, decision, decision_reason
        self.thresholds = thresholds or {keep_key(keep): threshold}
        self.combined_threshold = (None if combined is None
                                   else _pick(combined.thresholds, keep, Path("the combined score")))
        self.detector = DMRDetector(head, encoder=self.encoder())
        self.image_size = classifier.image_size  # the size the classifier was trained at: the run's

    @classmethod
    def load(cls, artifacts: RunArtifacts, with_combined: bool = True, batch_size: int = 500,
             device: torch.device | None = None, keep: float = ID_KEPT, decision: str = "auto") -> TrainedDetector:
        """The run's detector; a :class:`NoTrainedRun` in one line when an artifact it needs is missing."""
        for path, what in ((artifacts.classifier, "the classifier"), (artifacts.head, "the rejection head")):
            if not path.is_file():
                raise NoTrainedRun(f"no trained run here: {path} ({what}) is missing; {RUN_FIRST}")
        thresholds, attrs = _scores_attrs(artifacts.dmr_scores, "DMR's scores (stage eval)")
        threshold = _pick(thresholds, keep, artifacts.dmr_scores)
        try:
            # the head says which layer of F it reads: F is built as it was when the head was trained
            loaded = load_head(artifacts.head)
            classifier, classifier_sha256 = load_classifier_with_digest(artifacts.classifier, loaded.feature_layer,
                                                                       loaded.max_grid)
        except CheckpointError as err:
            raise NoTrainedRun(str(err)) from None
        head, feature = loaded.head, loaded.feature
        check_one_version(loaded, classifier_sha256, artifacts, attrs)
        check_head_fits(classifier, loaded, artifacts)
        combined = load_combined(classifier, artifacts, device, loaded.sha256) if with_combined else None
        if combined is not None:
            _pick(combined.thresholds, keep, artifacts.combined)
        dmr_summary = (_summary(open_zarr(artifacts.dmr_scores, "DMR's scores (stage eval)"), attrs)
                       if decision == "auto" and combined is not None else {})
        chosen, why = choose_decision(decision, dmr_summary, combined)
        return cls(classifier, head, feature, threshold, class_names(artifacts.classifier, artifacts.train_set),
                   combined, batch_size, device, keep, chosen, why, thresholds)

    def encoder(self) -> RepresentationEncoder:
        """images → the representation B reads, as the features stage computes it (``DMRDetector``'s encoder)."""
        return representation_encoder(self.classifier, self.feature, batch_size=self.batch_size, device=self.device)

    def describe(self) -> dict:
        """What decides the outputs: the representation, the share of ID images kept, thresholds, rule, decision
        and class names."""
        return {"source": "trained run", "feature": self.feature, "keep": keep_key(self.keep),
                "threshold": self.threshold, "decision": self.decision, "decision_reason": self.decision_reason,
                "threshold_rule": THRESHOLD_RULE, "class_names": self.class_names,
                "combined": None if self.combined is None else
                {"method": self.combined.method, "threshold": self.combined_threshold}}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per image of a uint8 N×S×S×3 batch: ``predicted`` (class index), ``confidence`` (max softmax),
        ``dmr_score``, ``dmr_is_ood``, with a combined score ``combined_score`` and ``combined_is_ood``, and
        ``is_ood`` (the chosen detector's decision)."""
        representations = extract_features(self.classifier, images, self.batch_size, desc="score",
                                           device=self.device)
        probabilities = torch.softmax(torch.from_numpy(representations["logits"]), dim=1)
        confidence, predicted = probabilities.max(dim=1)
        dmr = self.detector.scores(representations[self.feature])
        out = {"predicted": predicted.numpy(), "confidence": confidence.numpy(), "dmr_score": dmr,
               "dmr_is_ood": is_ood(dmr, self.threshold)}
        if self.combined is not None:
            posthoc = score_set(self.combined.detector, representations, images, self.batch_size)
            combined = self.combined.combine(dmr, posthoc)
            out.update(combined_score=combined, combined_is_ood=is_ood(combined, self.combined_threshold))
        out["is_ood"] = out["combined_is_ood" if self.decision == "combined" else "dmr_is_ood"]
        return out

    def pytorch_ood_detector(self) -> CombinedDetector:
        """The run's combined score as a pytorch-ood ``Detector`` (``predict(images)``; images as uint8 N×H×W×3 or
        float N×3×H×W in [0, 1]), with the standardisations stage combine fixed: it scores as ``score`` does."""
        if self.combined is None:
            raise NoTrainedRun("the run has no combined score (combine.detector: none); DMR alone is "
                               "DMRDetector (the `detector` attribute)")
        encoder = representation_encoder(self.classifier, self.combined.detector.representation
                                         if self.combined.detector.representation != "images" else self.feature,
                                         batch_size=self.batch_size, device=self.device)
        return CombinedDetector(self.detector, FittedOnImages(self.combined.detector, encoder), self.combined.combine)

    def export_graph(self):
        """This detector (its decision, its share of ID images kept) as the graph ``dmr export`` writes."""
        from .export import CombinedExport, build_graph

        combined = None
        if self.combined is not None:
            name = self.combined.detector.name
            spec = DETECTORS[name]
            if spec.servable is None or not self.combined.stored:
                raise DataError(f"the combined score's detector {name} has no exportable form (the exportable ones: "
                                f"{', '.join(n for n, d in DETECTORS.items() if d.servable)}); export the head alone "
                                f"with --no-combined, or set combine.detector to one of them and run `dvc repro`")
            c = self.combined.combine
            combined = CombinedExport(self.combined.method, spec.representation, self.combined.detector.module,
                                      (c.dmr.mean, c.dmr.std), (c.posthoc.mean, c.posthoc.std),
                                      self.combined_threshold)
        return build_graph(self.classifier, self.head, self.feature, self.threshold, combined, self.decision)
