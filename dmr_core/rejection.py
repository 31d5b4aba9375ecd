"""The rejection head B on the frozen classifier F (paper §3.3), and its pytorch-ood detector.

B: Linear(d, 2048) → ReLU → Linear(2048, 1), trained with binary cross-entropy on logits to
separate ID training images (target 0) from synthesised OOD images (target 1). Optionally, dropout on B's
input while training (not in the paper): every feature is zeroed with probability p, so B cannot rest on the
few coordinates that tell the generator's images from photographs and must use many. d is the size of the
chosen representation of F (the flattened last feature map by default: 64·8·8 = 4096 for ResNet-20).
F is never updated, so the classifier's predictions do not change. The test score is B's logit:
higher = more likely OOD.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_ood.api import FeaturesDetector
from torch import Tensor, nn

from .checkpoints import load_checkpoint, load_state_dict_checked
from .device import autocast, batch_loader, resolve_device
from .errors import CheckpointError
from .training import run_epochs, seed_everything


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
    """[InputDropout(p), training only] → Linear(d, hidden) → ReLU → Linear(hidden, 1); outputs the OOD logit."""

    def __init__(self, in_features: int, hidden: int = 2048, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"in_features": in_features, "hidden": hidden, "input_dropout": input_dropout}
        # kept outside ``net`` and without parameters, so the state dict (and checkpoints written before the
        # option) stay the same
        self.input_dropout = InputDropout(input_dropout)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(self.input_dropout(features.to(self.net[0].weight.dtype))).squeeze(1)


def train_rejection_head(
    id_features: np.ndarray,
    ood_features: np.ndarray,
    *,
    hidden: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    schedule: str,
    seed: int,
    input_dropout: float = 0.0,
    device: torch.device | None = None,
) -> tuple[RejectionHead, list[float]]:
    """Fit B with BCE-with-logits on ID (0) vs synthesised OOD (1) features; returns (head, loss per epoch).

    All features stay resident on ``device`` (default: ``resolve_device()``); batches are gathered by index
    there, with no per-sample Python work. The returned head is on the CPU."""
    device = device or resolve_device()
    generator = seed_everything(seed)
    if id_features.shape[1:] != ood_features.shape[1:]:
        raise ValueError(f"ID features {id_features.shape[1:]} and OOD features {ood_features.shape[1:]} differ")
    features = torch.from_numpy(np.concatenate([id_features, ood_features])).to(device)
    targets = torch.cat([torch.zeros(len(id_features)), torch.ones(len(ood_features))]).to(device)
    head = RejectionHead(features.shape[1], hidden, input_dropout).to(device)
    head.input_dropout.reseed(seed)
    loader = batch_loader(features, targets, batch_size=batch_size, shuffle=True, generator=generator)
    # fused: the same SGD update in one kernel; the step over 8.4M weights otherwise costs ~40% of a batch on CPU
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                weight_decay=weight_decay, fused=True)
    steps = max(1, epochs * len(loader))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if schedule == "cosine"
                 else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))

    def batch_loss(batch):
        x, y = batch
        with autocast(device):
            return F.binary_cross_entropy_with_logits(head(x).float(), y), len(y)

    history = run_epochs(loader, batch_loss, optimizer, scheduler, epochs=epochs, what="rejection head")
    head.cpu().eval().requires_grad_(False)
    return head, history


class DMRDetector(FeaturesDetector):
    """DMR as a pytorch-ood detector: the trained head's logit on the frozen classifier's features.

    ``predict_features`` takes the representation the head was trained on; ``predict`` takes images
    when an ``encoder`` (images → that representation) is given.
    """

    def __init__(self, head: RejectionHead, encoder=None) -> None:
        super().__init__()
        self.head = head.eval()
        self.encoder = encoder

    def fit(self, data_loader=None):  # the head is trained by train_rejection_head
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


def save_head(head: RejectionHead, feature: str, path, extra: dict | None = None) -> None:
    torch.save({"feature": feature, "config": head.config, "state_dict": head.state_dict(), **(extra or {})}, path)


def load_head(path) -> tuple[RejectionHead, str]:
    """Load a rejection head and the name of the representation it reads."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or not {"feature", "config", "state_dict"} <= set(payload):
        raise CheckpointError(f"{path} is not a rejection-head checkpoint of this project")
    head = RejectionHead(**payload["config"])
    load_state_dict_checked(head, payload["state_dict"], str(path))
    return head.eval().requires_grad_(False), payload["feature"]
