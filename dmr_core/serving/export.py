"""The trained detector as one self-contained TorchScript file, loadable with plain ``torch.jit.load`` and nothing
of this project.

Input contract of the exported module's ``forward(images)``: a batch of 32×32 RGB images, either uint8
N×32×32×3 (the layout of decoded image files and of the pipeline's stored sets) or float N×3×32×32 in [0, 1]
(``ToTensor`` output), on the CPU. Float images are clipped to [0, 1] and rounded to the uint8 grid, as every image
the pipeline scores was stored as uint8. Bringing an image of another size to 32×32 (shorter side to 32 with
antialiasing, centre crop) stays outside, in the loader (``dmr_core.data.sources.fit_image``): resizing
PIL images is not TorchScript. Any other shape or dtype raises.

Output: a dict of per-image tensors, ``logits`` (N×classes), ``predicted`` (class index), ``confidence`` (max
softmax), ``dmr_score`` (the head's logit, higher = more OOD) and ``is_ood`` (``dmr_score > threshold``, compared in
float64). The module's attributes ``threshold``, ``feature`` and ``class_names`` (also ``classes()``), and the extra
file ``dmr.json`` (``torch.jit.load(path, _extra_files={"dmr.json": ""})``), describe it. The combined score is not
exported: its post-hoc detector (KNN over the ID-train features) is scikit-learn's, not TorchScript.

Inside, the representations are those of the folded inference copy of F in channels-last layout, traced, with the
feature map rounded to float16 before the head as ``extract_features`` stores it; the exported scores equal the
pipeline's up to float rounding of the traced convolutions (see the tests for the tolerance).
"""

# no ``from __future__ import annotations``: TorchScript reads the annotations of ExportedDMR as objects

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.artifacts import atomic_output
from ..detectors.threshold import THRESHOLD_RULE
from ..errors import CheckpointError
from ..nets.classifier import CifarClassifier
from ..nets.rejection_head import RejectionHead

EXTRA_FILE = "dmr.json"
IMAGE_SIZE = 32
INPUT_CONTRACT = ("uint8 N×32×32×3 or float N×3×32×32 in [0, 1] (rounded to the uint8 grid), RGB, CPU; resize "
                  "other sizes first (shorter side to 32 with antialiasing, centre crop)")


class _Representations(nn.Module):
    """F's feature map, penultimate vector and logits of float images in [0, 1], through F's public methods."""

    def __init__(self, model: CifarClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fmap = self.model.feature_map(x).float()
        penultimate = self.model.penultimate(fmap)
        return fmap, penultimate, self.model.logits_from_penultimate(penultimate)


class ExportedDMR(nn.Module):
    """Preprocessing, F (traced), B and the threshold in one scripted module (see the module docstring)."""

    class_names: list[str]

    def __init__(self, representations: nn.Module, head: nn.Sequential, feature: str,
                 threshold: float, class_names: list[str]) -> None:
        super().__init__()
        self.representations = representations
        self.head = head
        self.feature = feature
        self.threshold = float(threshold)
        self.class_names = list(class_names)

    @torch.jit.export
    def classes(self) -> list[str]:
        return self.class_names

    @torch.jit.export
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 N×32×32×3 or float N×3×32×32 in [0, 1] → float N×3×32×32 on the uint8 grid, channels-last."""
        if images.dtype == torch.uint8:
            if images.dim() != 4 or images.size(1) != 32 or images.size(2) != 32 or images.size(3) != 3:
                raise ValueError("uint8 images must be N×32×32×3 (RGB); resize to 32×32 first")
            x = images.permute(0, 3, 1, 2).float().div(255.0)
        else:
            if not images.is_floating_point() or images.dim() != 4 or images.size(1) != 3 \
                    or images.size(2) != 32 or images.size(3) != 32:
                raise ValueError("images must be uint8 N×32×32×3 or float N×3×32×32 in [0, 1]")
            x = images.float().clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        fmap, penultimate, logits = self.representations(self.preprocess(images))
        if self.feature == "feature_map":
            representation = fmap.half().float().flatten(1)  # as extract_features stores it (float16)
        elif self.feature == "penultimate":
            representation = penultimate
        else:
            representation = logits
        score = self.head(representation).squeeze(1)
        confidence, predicted = torch.softmax(logits, dim=1).max(dim=1)
        return {"logits": logits, "predicted": predicted, "confidence": confidence, "dmr_score": score,
                "is_ood": score.double() > self.threshold}


def build_exported(classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
                   class_names: list[str] | None = None) -> torch.jit.ScriptModule:
    """The scripted module of a classifier, a head that reads ``feature`` and its threshold."""
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it still is what plain torch loads
        warnings.simplefilter("ignore", FutureWarning)
        return _build(classifier, head, feature, threshold, class_names)


def _build(classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
           class_names: list[str] | None) -> torch.jit.ScriptModule:
    folded = classifier.for_inference().to(memory_format=torch.channels_last)
    example = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(_Representations(folded), example, check_trace=False)
    num_classes = classifier.classifier_head().out_features
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    net = head.eval().net.float()
    module = ExportedDMR(traced, net, feature, threshold, names).eval().requires_grad_(False)
    return torch.jit.script(module)


def metadata(feature: str, threshold: float, class_names: list[str]) -> dict:
    return {"format": "dmr-pipeline exported detector, version 1", "input": INPUT_CONTRACT, "feature": feature,
            "threshold": threshold, "threshold_rule": THRESHOLD_RULE, "class_names": class_names,
            "outputs": ["logits", "predicted", "confidence", "dmr_score", "is_ood"]}


def export_detector(path: str | Path, classifier: CifarClassifier, head: RejectionHead, feature: str,
                    threshold: float, class_names: list[str] | None = None) -> dict:
    """Write the TorchScript file atomically (no partial file on failure); returns its metadata."""
    module = build_exported(classifier, head, feature, threshold, class_names)
    meta = metadata(feature, threshold, list(module.class_names))
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})
    return meta


class ExportedDetector:
    """An exported file behind the interface of ``TrainedDetector`` (``score``, ``describe``, ``class_names``), for
    ``dmr score --model``."""

    def __init__(self, module: torch.jit.ScriptModule, meta: dict, batch_size: int = 500) -> None:
        self.module, self.meta, self.batch_size = module, meta, batch_size
        self.class_names = list(meta.get("class_names") or module.class_names)
        self.combined = None

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 500) -> "ExportedDetector":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"exported model {path} not found: write it with `dmr export {path}`")
        extra = {EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            meta = json.loads(extra[EXTRA_FILE] or "{}")
        except Exception as err:  # noqa: BLE001 -- torch raises several types for foreign or truncated files
            raise CheckpointError(f"{path} is not an exported DMR model ({type(err).__name__}); write it with "
                                  f"`dmr export`") from None
        if not hasattr(module, "threshold"):
            raise CheckpointError(f"{path} is a TorchScript file but not an exported DMR model; write it with "
                                  f"`dmr export`")
        return cls(module.eval(), meta, batch_size)

    def describe(self) -> dict:
        return {"source": "exported model", "feature": self.module.feature, "threshold": self.module.threshold,
                "threshold_rule": self.meta.get("threshold_rule", THRESHOLD_RULE), "class_names": self.class_names,
                "combined": None}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        parts: list[dict[str, Tensor]] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                parts.append(self.module(torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))))
        keys = ("predicted", "confidence", "dmr_score", "is_ood")
        return {key: torch.cat([part[key] for part in parts]).numpy() for key in keys}
