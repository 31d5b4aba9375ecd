"""DMR as a pytorch-ood detector: the trained rejection head's logit on the frozen classifier's representation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_ood.api import FeaturesDetector
from torch import Tensor

from ..evaluation.metrics import evaluate_scores
from ..nets.rejection_head import RejectionHead


class DMRDetector(FeaturesDetector):
    """``predict_features`` takes the representation the head was trained on; ``predict`` takes images when an
    ``encoder`` (images → that representation) is given."""

    def __init__(self, head: RejectionHead, encoder=None) -> None:
        super().__init__()
        self.head = head.eval()
        self.encoder = encoder

    def fit(self, data_loader=None):  # the head is trained by dmr_core.training.head
        return self

    def fit_features(self, x: Tensor, y: Tensor):
        return self

    @torch.inference_mode()
    def predict_features(self, x: Tensor) -> Tensor:
        return torch.cat([self.head(chunk) for chunk in torch.split(x, 4096)])

    @torch.inference_mode()
    def predict(self, x: Tensor) -> Tensor:
        if self.encoder is None:
            raise ValueError("DMRDetector.predict needs an encoder (images → features); use predict_features")
        return self.predict_features(self.encoder(x))

    def scores(self, features: Any) -> np.ndarray:
        """Scores (higher = more OOD) of an array-like (NumPy or zarr) of representations, as NumPy."""
        return self.predict_features(torch.from_numpy(np.asarray(features[:]))).numpy()


@dataclass
class Evaluation:
    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]    # per OOD set and ``mean`` (``evaluate_scores``)


def evaluate_head(head: RejectionHead, id_test: Any, ood_sets: dict[str, Any]) -> Evaluation:
    """The head's scores of ID test and each OOD set (array-likes of its representation) and their OOD metrics."""
    detector = DMRDetector(head)
    id_scores = detector.scores(id_test)
    ood_scores = {name: detector.scores(features) for name, features in ood_sets.items()}
    return Evaluation(id_scores, ood_scores, evaluate_scores(id_scores, ood_scores))
