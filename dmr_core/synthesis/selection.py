"""Which synthesised images the head trains on: all, or those nearest the ID classes as the frozen classifier sees
them.

Outlier synthesis works best where the synthesised outliers lie near the boundary of the ID data: NPOS (Tao et al.,
ICLR 2023) keeps the samples at the boundary of each class's feature cloud, BOOD (2025) pushes them towards the
decision boundary. Here the frozen classifier F itself says which synthesised images lie near its classes: those
it assigns to a class with the highest confidence, max_c softmax(F(x))_c. A head trained to reject those must tell
apart images F takes for ID, which is the near-OOD case, instead of images nothing would take for ID.
"""

from __future__ import annotations

import numpy as np


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """The classifier's confidence per row of N×C logits, max_c softmax(z)_c (Hendrycks & Gimpel's MSP), in
    float64 so that near-equal confidences still order."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


def most_confident(confidence: np.ndarray, share: float) -> np.ndarray:
    """The indices, in their original order, of the ``share`` (in (0, 1]) of rows with the highest ``confidence``
    (at least one row; ties broken by position, so the choice is deterministic)."""
    if not 0 < share <= 1:
        raise ValueError(f"share = {share}: give a share in (0, 1]")
    keep = max(1, int(round(share * len(confidence))))
    order = np.argsort(-confidence, kind="stable")
    return np.sort(order[:keep])
