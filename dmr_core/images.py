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


# The image sizes the generators and the CIFAR-stem nets are built for: g·2ⁿ with a last grid g of 4 to 7 cells
# a side after n ≥ 3 halvings (32 → 4×4 as the paper's 32-px nets; 224 → 7×7 as ImageNet models end).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256
_GRIDS = (4, 5, 6, 7)


def downsampling_ladder(size: int) -> tuple[int, int]:
    """(halvings n, last grid g) with size = g·2ⁿ, g in 4..7, n ≥ 3; ValueError for a size no ladder builds."""
    for halvings in range(3, 9):
        grid, rest = divmod(size, 2 ** halvings)
        if not rest and grid in _GRIDS:
            return halvings, grid
    raise ValueError(f"image size {size} cannot be built (the nets halve it to a 4- to 7-cell grid); use one of "
                     f"{', '.join(map(str, buildable_image_sizes()))}")


def buildable_image_sizes() -> tuple[int, ...]:
    """Every size from MIN_IMAGE_SIZE to MAX_IMAGE_SIZE that :func:`downsampling_ladder` builds, ascending."""
    return tuple(sorted(g * 2 ** n for g in _GRIDS for n in range(3, 9)
                        if MIN_IMAGE_SIZE <= g * 2 ** n <= MAX_IMAGE_SIZE))
