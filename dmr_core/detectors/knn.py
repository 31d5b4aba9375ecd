"""KNN's score (Sun et al., ICML 2022) as a torch module over a stored reference set, so that the combined score can
be served and exported without scikit-learn.

pytorch-ood's ``KNN`` (what stage baselines fits and evaluates) normalises every feature to unit length and scores
an input by the Euclidean distance of its normalised feature z to the k-th nearest normalised ID-train feature:

    s(x) = ‖z − z_(k)‖₂,   z = f(x) / max(‖f(x)‖₂, 1e-12)

Its index is scikit-learn's ``NearestNeighbors``, which neither ``torch.export`` nor ONNX can hold. For unit vectors
‖z − r‖² = 2 − 2 z·r, so the nearest rows are one matrix product and a top-k: exportable. The distance itself is
then taken to the k-th row found, ‖z − r_(k)‖, not as √(2 − 2 z·r): for near neighbours (z·r close to 1) the
difference 2 − 2 z·r cancels most of float32's digits, which put the served score up to 4e-5 away from pytorch-ood's
at distances near 0.015 (a four-class set of flat colours). Equal to pytorch-ood's up to float32 rounding (the
tests compare them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

NORM_FLOOR = 1e-12  # pytorch-ood's clamp, which keeps a zero vector finite


def unit_rows(features: np.ndarray | Tensor) -> Tensor:
    """Each row divided by its Euclidean norm (at least ``NORM_FLOOR``), float32: the normalisation of pytorch-ood's
    KNN, applied to the reference set once when it is stored."""
    z = torch.as_tensor(np.asarray(features) if isinstance(features, np.ndarray) else features).float()
    return z / z.norm(dim=1, keepdim=True).clamp(min=NORM_FLOOR)


class KNNScore(nn.Module):
    """``forward(features N×D) → N`` distances to the k-th nearest row of ``reference`` (unit rows, see
    :func:`unit_rows`); higher = more OOD."""

    def __init__(self, reference: Tensor, k: int) -> None:
        super().__init__()
        if reference.dim() != 2 or not 1 <= k <= reference.size(0):
            raise ValueError(f"k = {k} needs a reference set of at least k rows; it has shape "
                             f"{tuple(reference.shape)}")
        self.register_buffer("reference", reference.float().contiguous())
        self.k = int(k)

    def forward(self, features: Tensor) -> Tensor:
        z = features.float()
        z = z / z.norm(dim=1, keepdim=True).clamp(min=NORM_FLOOR)
        similarity = z @ self.reference.T
        # the k-th nearest row is the one of the k-th largest similarity; its distance is measured directly
        kth = torch.topk(similarity, self.k, dim=1, largest=True, sorted=True).indices[:, self.k - 1]
        return (z - self.reference[kth]).norm(dim=1)
