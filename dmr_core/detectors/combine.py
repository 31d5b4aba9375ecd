"""DMR's head score combined with a post-hoc score (the paper notes that DMR combines with other detectors).

Both scores are put on one scale by standardising each with the mean and standard deviation of its own
scores on a fixed subset of ID *training* images (no test image is used to set the scale), then added:

    s(x) = (s_DMR(x) − m_DMR) / σ_DMR + (s_post(x) − m_post) / σ_post

Training-set statistics are slightly optimistic for both (the head was trained on these images; a kNN
score counts the image itself among its neighbours), which shifts and scales a score but does not
reorder it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from pytorch_ood.api import Detector, RequiresFittingException
from pytorch_ood.utils import is_known
from torch import Tensor
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Standardisation:
    """``(s − mean) / std`` with the mean and standard deviation of one detector's ID-train reference scores:
    stored with a trained run, so that new images are put on the scale the run's combined score was evaluated on."""

    mean: float
    std: float

    @classmethod
    def of(cls, reference: np.ndarray) -> Standardisation:
        reference = np.asarray(reference, dtype=np.float64)
        spread = reference.std()
        if not np.isfinite(spread) or spread == 0:
            raise ValueError("the reference scores have no spread; cannot standardise")
        return cls(float(reference.mean()), float(spread))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.mean) / self.std


@dataclass(frozen=True)
class CombinedScore:
    """The combined score as a function of the two scores: both standardisations, fixed by the reference scores."""

    dmr: Standardisation
    posthoc: Standardisation

    @classmethod
    def fit(cls, dmr_reference: np.ndarray, posthoc_reference: np.ndarray) -> CombinedScore:
        return cls(Standardisation.of(dmr_reference), Standardisation.of(posthoc_reference))

    def __call__(self, dmr: np.ndarray, posthoc: np.ndarray) -> np.ndarray:
        """The sum of the two standardised scores (higher = more OOD), float64."""
        if len(dmr) != len(posthoc):
            raise ValueError(f"{len(dmr)} DMR scores but {len(posthoc)} post-hoc scores")
        return self.dmr(dmr) + self.posthoc(posthoc)

    def to_attrs(self) -> dict:
        return {"dmr_standardisation": asdict(self.dmr), "posthoc_standardisation": asdict(self.posthoc)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> CombinedScore:
        return cls(Standardisation(**attrs["dmr_standardisation"]),
                   Standardisation(**attrs["posthoc_standardisation"]))


class CombinedDetector(Detector):
    """The combined score as a pytorch-ood ``Detector``, so that it drops into pytorch-ood's evaluation code
    (``OODMetrics``, ``GridSearch``): ``predict(x)`` is s(x) above, of the scores two detectors give the inputs x.

    ``fit(loader)`` fits the post-hoc detector on the loader (ID training data, as stage baselines fits it; a
    detector that needs no fit is left as it is), then both standardisations on the two detectors' scores of the
    loader's known inputs (pytorch-ood's convention: labels < 0 are OOD and ignored). A trained run's combined score,
    with the standardisations stage combine fixed, is ``TrainedDetector.pytorch_ood_detector()``."""

    requires_fit = True

    def __init__(self, dmr: Detector, posthoc: Detector, combination: CombinedScore | None = None) -> None:
        self.dmr, self.posthoc, self.combination = dmr, posthoc, combination

    def fit(self, data_loader: DataLoader) -> CombinedDetector:
        self.posthoc.fit(data_loader)
        dmr, posthoc = [], []
        for x, y, *_ in data_loader:
            known = is_known(torch.as_tensor(y))
            if known.any():
                dmr.append(self._scores(self.dmr, x[known]))
                posthoc.append(self._scores(self.posthoc, x[known]))
        if not dmr:
            raise ValueError("the loader holds no ID inputs (every label < 0); cannot fit the standardisations")
        self.combination = CombinedScore.fit(np.concatenate(dmr), np.concatenate(posthoc))
        return self

    def predict(self, x: Tensor) -> Tensor:
        """Combined scores of the inputs x (higher = more OOD), float32."""
        if self.combination is None:
            raise RequiresFittingException("CombinedDetector needs fit(loader) (or a CombinedScore) first")
        return torch.from_numpy(self.combination(self._scores(self.dmr, x), self._scores(self.posthoc, x))).float()

    @staticmethod
    def _scores(detector: Detector, x: Tensor) -> np.ndarray:
        with torch.inference_mode():
            return detector.predict(x).detach().float().cpu().numpy()


def standardise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(scores − mean(reference)) / std(reference), in float64."""
    return Standardisation.of(reference)(scores)


def combined_scores(dmr: np.ndarray, posthoc: np.ndarray, dmr_reference: np.ndarray,
                    posthoc_reference: np.ndarray) -> np.ndarray:
    """The sum of the two standardised scores (higher = more OOD)."""
    if len(dmr) != len(posthoc):
        raise ValueError(f"{len(dmr)} DMR scores but {len(posthoc)} post-hoc scores")
    return CombinedScore.fit(dmr_reference, posthoc_reference)(dmr, posthoc)


def reference_rows(num_train: int, size: int, seed: int) -> np.ndarray:
    """The ID-training rows whose scores set each score's scale: a seeded subset of ``size`` rows (all of them
    when the set is smaller), ascending."""
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:min(size, num_train)])
