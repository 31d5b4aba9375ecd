"""The rejection head B on the frozen classifier F (paper §3.3).

B: Linear(d, 2048) → ReLU → Linear(2048, 1), trained with binary cross-entropy on logits to
separate ID training images (target 0) from synthesised OOD images (target 1). Optionally, dropout on B's
input while training (not in the paper): every feature is zeroed with probability p, so B cannot rest on the
few coordinates that tell the generator's images from photographs and must use many. d is the size of the
chosen representation of F, which B flattens (the last feature map by default: 64·8·8 = 4096 for ResNet-20).
F is never updated, so the classifier's predictions do not change. The test score is B's logit:
higher = more likely OOD.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .classifier_base import AUTO_LAYER
from .checkpoints import load_checkpoint_with_digest, load_state_dict_checked, save_checkpoint


class InputDropout(nn.Module):
    """Inverted dropout (Srivastava et al., 2014) on the head's input, in training mode only.

    Each element is kept with probability 1 − p (exact to 1/65536) and kept elements are scaled by
    1 / (1 − p), as ``nn.Dropout`` does. The masks are cut from a seeded PCG64 stream, four 16-bit uniforms per
    64-bit word, instead of one Mersenne-Twister Bernoulli draw per element: on this project's 2-core CPUs
    ``nn.Dropout`` took 40 % of the head's training time (profiled), these masks about a quarter of that.
    """

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"input dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # an int16 uniform at or above it is kept
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the mask stream, so a training run is reproducible from its seed."""
        self.bits = np.random.default_rng(seed).bit_generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        words = self.bits.random_raw(-(-n // 4)).view(np.int16)[:n].reshape(x.shape)
        keep = torch.from_numpy(words >= self.threshold).to(x.device, non_blocking=True)
        return (x * (1.0 / (1.0 - self.p))).mul_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RejectionHead(nn.Module):
    """Flatten → [InputDropout(p), training only] → Linear(d, hidden) → ReLU → Linear(hidden, 1); outputs the OOD
    logit of each row of an N×… representation (a feature map N×C×H×W or a vector N×d)."""

    def __init__(self, in_features: int, hidden: int = 2048, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"in_features": in_features, "hidden": hidden, "input_dropout": input_dropout}
        # kept outside ``net`` and without parameters, so the state dict (and checkpoints written before the
        # option) stay the same
        self.input_dropout = InputDropout(input_dropout)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        flat = features.flatten(1).to(self.net[0].weight.dtype)
        return self.net(self.input_dropout(flat)).squeeze(1)


class LoadedHead(NamedTuple):
    """A rejection head with what it was made from: the representation it reads (``head.feature``), the classifier
    module whose output is the feature map (``features.layer``), and the classifier file's digest (None in heads
    saved without one); ``sha256`` is the head file's own, which stages eval and combine record."""

    head: RejectionHead
    feature: str
    feature_layer: str
    classifier_sha256: str | None
    sha256: str
    max_grid: int = 0  # features.max_grid: the largest side the feature map was pooled to (0: as it came)


def save_head(head: RejectionHead, feature: str, path, extra: dict | None = None, feature_layer: str = AUTO_LAYER,
              classifier_sha256: str | None = None, max_grid: int = 0) -> None:
    save_checkpoint({"feature": feature, "feature_layer": feature_layer, "classifier_sha256": classifier_sha256,
                     "max_grid": max_grid,
                     "config": head.config, "state_dict": head.state_dict(), **(extra or {})}, path)


def load_head(path) -> LoadedHead:
    """Load a rejection head and what it reads; unpacks as (head, feature, feature_layer, classifier_sha256). A head
    saved before the layer (or the feature map's pooling) was stored read the default layer (as it came)."""
    payload, digest = load_checkpoint_with_digest(path)
    if not isinstance(payload, dict) or not {"feature", "config", "state_dict"} <= set(payload):
        raise CheckpointError(f"{path} is not a rejection-head checkpoint of this project")
    head = RejectionHead(**payload["config"])
    load_state_dict_checked(head, payload["state_dict"], str(path))
    return LoadedHead(head.eval().requires_grad_(False), payload["feature"],
                      str(payload.get("feature_layer") or AUTO_LAYER), payload.get("classifier_sha256"), digest,
                      int(payload.get("max_grid") or 0))
