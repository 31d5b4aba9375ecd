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
