"""Image layouts: the uint8 N×H×W×3 arrays stored on disk and the float N×3×H×W tensors in [0, 1] the networks take."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_float_images(batch_uint8: Tensor) -> Tensor:
    """N×H×W×3 uint8 → N×3×H×W float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8_images(batch_float: Tensor) -> np.ndarray:
    """N×3×H×W float in [0, 1] → N×H×W×3 uint8 (rounded, clipped)."""
    return batch_float.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
