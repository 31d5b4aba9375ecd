"""F's chosen representation as a function of images, computed exactly as the features stage computes it.

The rejection head was trained and evaluated on what ``extract_features`` stores (the folded inference copy of
F, its autocast rules, the feature map rounded to float16), so an encoder that scores new images must go through
``extract_features`` itself: any other path (the unfolded model, float32 feature maps) gives scores that differ
from the pipeline's in the last digits and can flip a decision at the threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .classifier import CifarClassifier
from .features import REPRESENTATIONS, extract_features


def as_uint8_images(images: Tensor | np.ndarray) -> np.ndarray:
    """The pipeline's stored layout, uint8 N×H×W×3, of a batch given either in it or as float N×3×H×W in [0, 1].

    Float images are clipped to [0, 1] and rounded to the uint8 grid, as every image the pipeline scores was
    stored as uint8; ``ToTensor`` output of 8-bit images is recovered exactly."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be N×H×W×3, got shape {tuple(images.shape)}")
        return images.numpy()
    if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 N×H×W×3 or float N×3×H×W in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class RepresentationEncoder:
    """images → F's ``representation`` (``feature_map``, ``penultimate`` or ``logits``), a CPU tensor, through
    ``extract_features``: usable as a pytorch-ood detector's ``encoder``."""

    def __init__(self, classifier: CifarClassifier, representation: str, batch_size: int = 500,
                 device: torch.device | None = None) -> None:
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {representation!r}; choose from {list(REPRESENTATIONS)}")
        self.classifier, self.representation = classifier, representation
        self.batch_size, self.device = batch_size, device

    def all(self, images: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Every representation of the batch, as the features stage stores them."""
        return extract_features(self.classifier, as_uint8_images(images), self.batch_size, desc="encode",
                                device=self.device)

    def __call__(self, images: Tensor | np.ndarray) -> Tensor:
        return torch.from_numpy(self.all(images)[self.representation])


def representation_encoder(classifier: CifarClassifier, representation: str, **kwargs) -> RepresentationEncoder:
    """The encoder for a DMR head that reads ``representation`` (the name ``load_head`` returns)."""
    return RepresentationEncoder(classifier, representation, **kwargs)
