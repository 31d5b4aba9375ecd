"""One synthesis baseline from its synthesised set on: the rejection head trained on it, the count it reports and
its picture, for either kind of set a variant returns (``variants``: uint8 images, or ``SynthesisedFeatures`` in
F's representation). Kept apart from the variant table so that what reads only the table (params validation, the
report) does not depend on head training or plotting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..nets.classifier_base import Classifier
from ..plotting import save_feature_histograms, save_image_grid
from ..training.head import HeadConfig, TrainedHead, train_head_on_images, train_rejection_head
from .variants import Synthesised, SynthesisedFeatures


def train_head_on_synthesised(
    classifier: Classifier, id_features: np.ndarray, synthesised: Synthesised, feature: str, config: HeadConfig,
    batch_size: int = 500,
) -> TrainedHead:
    """B on the ID training features (F's ``feature`` representation) against a variant's set (paper §3.3):
    images go through F first, as DMR's do (``train_head_on_images``); features are already that representation
    and go to ``train_rejection_head`` as they are."""
    if isinstance(synthesised, SynthesisedFeatures):
        head, history = train_rejection_head(id_features, synthesised.features, config)
        return TrainedHead(head, history, synthesised.features)
    return train_head_on_images(classifier, id_features, synthesised, feature, config, batch_size)


def synthesised_count(synthesised: Synthesised) -> dict[str, int]:
    """The metrics field naming how many samples the head was trained on, and of which kind."""
    kind = "features" if isinstance(synthesised, SynthesisedFeatures) else "images"
    return {f"synthesised_{kind}": len(synthesised)}


def save_synthesised_plot(synthesised: Synthesised, id_features: np.ndarray, feature: str, path: str | Path,
                          name: str) -> None:
    """32 evenly spaced images of an image set; for a feature set, its norms and values beside the ID training
    features' (``save_feature_histograms``), which show what the head is given to tell apart."""
    if isinstance(synthesised, SynthesisedFeatures):
        save_feature_histograms(id_features, synthesised.features, path,
                                f"{name}: synthesised OOD training features vs ID training features ({feature})")
        return
    show = np.linspace(0, len(synthesised) - 1, min(32, len(synthesised))).astype(int)
    save_image_grid([(f"{name}: synthesised OOD training images", synthesised[show])], path, ncols=16)
