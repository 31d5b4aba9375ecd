"""The trained detector as one self-contained file that loads with nothing of this project: ``torch.export``'s
ExportedProgram (``.pt2``, the default; ``torch.export.load(path).module()``), ONNX (``.onnx``, for onnxruntime and
the runtimes that read ONNX) or TorchScript (``.pt``, ``torch.jit.load``; deprecated by torch, kept for old
deployments).

Each file holds the preprocessing, the frozen classifier F (its BatchNorm folded into the convolutions), the
rejection head B, by default the combined score's post-hoc part (for KNN its unit-normalised ID-train reference
vectors; ``--no-combined`` leaves it out), and the thresholds of the chosen share of ID images kept.

Input contract of ``forward(images)``: uint8 N×S×S×3 RGB, S the run's image size (data.image_size, stated in the
metadata as ``image_size``; the layout of decoded image files and of the pipeline's stored sets), on the CPU; N ≥ 1.
The TorchScript file also takes float N×3×S×S in [0, 1] (``ToTensor`` output), rounded to the uint8 grid as every
image the pipeline scores was stored as uint8; a float value outside [0, 1] is refused, and an image holding NaN is
flagged OOD. Bringing an image of another size to S×S (shorter side to S with antialiasing, centre crop) stays
outside, in the loader (``dmr_core.data.sources.fit_image``). Another shape, dtype or channel count is refused by
the file itself.

Outputs, per image: ``logits`` (N×classes), ``predicted`` (class index), ``confidence`` (max softmax), ``dmr_score``
(the head's logit, higher = more OOD), ``dmr_is_ood`` (``dmr_score > dmr threshold``, compared in float64) and, with
the combined score, ``combined_score`` and ``combined_is_ood``; ``is_ood`` is the decision of the file's detector
(``decision`` in its metadata). The metadata (``dmr.json``: a pt2 / TorchScript extra file, an ONNX metadata
property) states the contract, the thresholds at every stored share of ID images kept, the rule and the class names.

Inside, the representations are those of the folded copy of F, with the feature map rounded to float16 before the
head as ``extract_features`` stores it; scores equal the pipeline's up to float rounding (see the tests).
"""

# no ``from __future__ import annotations``: TorchScript reads the annotations of ScriptedDetector as objects

import contextlib
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.artifacts import atomic_output
from ..detectors.threshold import THRESHOLD_RULE
from ..errors import CheckpointError
from ..nets.classifier import CifarClassifier
from ..nets.classifier_base import bounded_grid
from ..nets.rejection_head import RejectionHead

FORMATS = ("pt2", "onnx", "torchscript")
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
EXTRA_FILE = "dmr.json"
FORMAT_NAME = "dmr-pipeline exported detector, version 2"
ONNX_OPSET = 20


def input_contract(size: int) -> str:
    """The input contract of a file for ``size``-px images, as its metadata states it."""
    return (f"uint8 N×{size}×{size}×3 RGB, CPU, N ≥ 1 (TorchScript also float N×3×{size}×{size} in [0, 1]); resize "
            f"other sizes first (shorter side to {size} with antialiasing, centre crop)")
OUTPUTS = ("logits", "predicted", "confidence", "dmr_score", "dmr_is_ood", "combined_score", "combined_is_ood",
           "is_ood")


@dataclass(frozen=True)
class CombinedExport:
    """The combined score's part of an exported file: the post-hoc score's module over its representation, the
    two standardisations (mean, std) and the combined score's threshold."""

    method: str
    representation: str
    module: nn.Module
    dmr_scale: tuple[float, float]
    posthoc_scale: tuple[float, float]
    threshold: float


class DetectorGraph(nn.Module):
    """float N×3×S×S on the uint8 grid → the outputs (see the module docstring); every branch fixed when built."""

    def __init__(self, classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
                 combined: CombinedExport | None, decision: str) -> None:
        super().__init__()
        self.classifier = classifier.for_inference()
        self.image_size = int(classifier.image_size)
        self.head = head.eval().net.float()
        self.feature, self.threshold, self.decision = feature, float(threshold), decision
        self.combined = combined
        self.posthoc = None if combined is None else combined.module.eval()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        invalid = torch.isnan(x).flatten(1).any(dim=1)
        x = torch.nan_to_num(x, nan=0.0)
        if self.classifier.reads_pooled_layer():
            fmap = bounded_grid(self.classifier.feature_map(x), self.classifier.max_grid).float()
            penultimate = self.classifier.penultimate(fmap)
            logits = self.classifier.logits_from_penultimate(penultimate)
        else:  # the head reads another layer (features.layer): that module's output, recorded in the forward pass
            found = self.classifier.representations(x)
            fmap, penultimate, logits = (found[k].float() for k in ("feature_map", "penultimate", "logits"))
        representations = {"feature_map": fmap.half().float().flatten(1),  # as extract_features stores it
                           "penultimate": penultimate, "logits": logits}
        dmr = self.head(representations[self.feature]).squeeze(1)
        confidence, predicted = torch.softmax(logits, dim=1).max(dim=1)
        out = {"logits": logits, "predicted": predicted, "confidence": confidence, "dmr_score": dmr,
               "dmr_is_ood": (dmr.double() > self.threshold) | invalid}
        if self.combined is not None:
            c = self.combined
            posthoc = self.posthoc(representations[c.representation]).float()
            combined = ((dmr.double() - c.dmr_scale[0]) / c.dmr_scale[1]
                        + (posthoc.double() - c.posthoc_scale[0]) / c.posthoc_scale[1])
            out.update(combined_score=combined, combined_is_ood=(combined > c.threshold) | invalid)
        out["is_ood"] = out["combined_is_ood" if self.decision == "combined" else "dmr_is_ood"]
        return out


class UInt8Input(nn.Module):
    """uint8 N×S×S×3 → the graph's float input (the pt2 and ONNX files' preprocessing)."""

    def __init__(self, graph: DetectorGraph) -> None:
        super().__init__()
        self.detector = graph  # not ``graph``: an exported GraphModule's own attribute

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.detector(images.permute(0, 3, 1, 2).float().div(255.0))


class _TracedCore(nn.Module):
    """The graph's outputs as a tuple in ``OUTPUTS`` order (what tracing keeps), for the TorchScript file."""

    def __init__(self, graph: DetectorGraph) -> None:
        super().__init__()
        self.detector = graph

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.detector(x)
        return tuple(out[key] for key in OUTPUTS if key in out)


class ScriptedDetector(nn.Module):
    """The TorchScript file's module: both input layouts checked and brought to the traced core's input."""

    class_names: list[str]
    keys: list[str]
    image_size: int

    def __init__(self, core: torch.jit.ScriptModule, keys: list[str], threshold: float, class_names: list[str],
                 image_size: int) -> None:
        super().__init__()
        self.core, self.keys, self.threshold, self.class_names = core, keys, float(threshold), list(class_names)
        self.image_size = int(image_size)

    @torch.jit.export
    def classes(self) -> list[str]:
        return self.class_names

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        s = self.image_size
        side = str(s) + "×" + str(s)
        if images.dim() != 4 or images.size(0) < 1:
            raise ValueError("images must be a batch of at least one image, N×" + side + "×3 uint8 or N×3×" + side
                             + " float")
        if images.dtype == torch.uint8:
            if images.size(1) != s or images.size(2) != s or images.size(3) != 3:
                raise ValueError("uint8 images must be N×" + side + "×3 (RGB); resize to " + side + " first")
            x = images.permute(0, 3, 1, 2).float().div(255.0)
        else:
            if not images.is_floating_point() or images.size(1) != 3 or images.size(2) != s or images.size(3) != s:
                raise ValueError("images must be uint8 N×" + side + "×3 or float N×3×" + side + " in [0, 1]")
            x = images.float()
            if bool((x < 0.0).any()) or bool((x > 1.0).any()):
                raise ValueError("float images must lie in [0, 1] (ToTensor's range); divide 0–255 values by 255")
            x = x.mul(255.0).round().div(255.0)
        values = self.core(x)
        out: dict[str, Tensor] = {}
        for i in range(len(self.keys)):
            out[self.keys[i]] = values[i]
        return out


def build_graph(classifier: CifarClassifier, head: RejectionHead, feature: str, threshold: float,
                combined: CombinedExport | None = None, decision: str = "dmr") -> DetectorGraph:
    if decision == "combined" and combined is None:
        raise ValueError("the combined decision needs the combined score")
    return DetectorGraph(classifier, head, feature, threshold, combined, decision).eval().requires_grad_(False)


def _example(size: int, batch: int = 2) -> Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def exported_program(graph: DetectorGraph) -> torch.export.ExportedProgram:
    """The graph behind uint8 input, exported with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        return torch.export.export(UInt8Input(graph), (_example(graph.image_size),), dynamic_shapes=({0: batch},),
                                   strict=False)


def scripted(graph: DetectorGraph, class_names: list[str]) -> torch.jit.ScriptModule:
    example = _example(graph.image_size).permute(0, 3, 1, 2).float().div(255.0)
    keys = [key for key in OUTPUTS if key in graph(example)]
    with torch.no_grad(), warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated
        warnings.simplefilter("ignore", FutureWarning)
        core = torch.jit.trace(_TracedCore(graph), example, check_trace=False)
        return torch.jit.script(ScriptedDetector(core, keys, graph.threshold, class_names, graph.image_size).eval())


def metadata(graph: DetectorGraph, class_names: list[str], thresholds: dict, keep: str, fmt: str) -> dict:
    combined = graph.combined
    return {"format": FORMAT_NAME, "file_format": fmt, "input": input_contract(graph.image_size),
            "image_size": graph.image_size, "feature": graph.feature,
            "keep": keep, "threshold": graph.threshold, "decision": graph.decision,
            "combined": None if combined is None else {"method": combined.method, "threshold": combined.threshold},
            "thresholds": thresholds, "threshold_rule": THRESHOLD_RULE, "class_names": class_names,
            "outputs": [key for key in OUTPUTS if combined is not None or not key.startswith("combined")]}


def export_detector(path: str | Path, graph: DetectorGraph, class_names: list[str], fmt: str = "pt2",
                    thresholds: dict | None = None, keep: str = "0.95") -> dict:
    """Write the file atomically (no partial file on failure); returns its metadata."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    meta = metadata(graph, class_names, thresholds or {}, keep, fmt)
    text = json.dumps(meta)
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "pt2":  # through a buffer: the archive's folder is named after the file, not the temporary one
            buffer = io.BytesIO()
            torch.export.save(exported_program(graph), buffer, extra_files={EXTRA_FILE: text})
            tmp.write_bytes(buffer.getvalue())
        elif fmt == "torchscript":
            torch.jit.save(scripted(graph, class_names), str(tmp), _extra_files={EXTRA_FILE: text})
        else:
            _write_onnx(graph, tmp, text)
    return meta


def _write_onnx(graph: DetectorGraph, path: Path, text: str) -> None:
    import logging

    names = [key for key in OUTPUTS if graph.combined is not None or not key.startswith("combined")]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # the exporter prints its progress to stdout
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(exported_program(graph), (_example(graph.image_size),), dynamo=True,
                                    opset_version=ONNX_OPSET,
                                    input_names=["images"], output_names=names, external_data=False,
                                    optimize=True)
    program.model.metadata_props[EXTRA_FILE] = text
    program.save(str(path), external_data=False)


def file_format(path: Path) -> str:
    """pt2, torchscript or onnx, by the file's content (not its name); a :class:`CheckpointError` otherwise."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise CheckpointError(f"{path} is damaged or truncated (not a whole zip archive); write it again with "
                                  f"`dmr export`") from None
        if any(name.endswith("/archive_format") or name.endswith("models/model.json") for name in names):
            return "pt2"
        if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
            return "torchscript"
        raise CheckpointError(f"{path} is a zip archive but not an exported DMR model; write it with `dmr export`")
    return "onnx"


def _load_meta(text: str | bytes | None, path: Path) -> dict:
    try:
        meta = json.loads(text or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("dmr-pipeline exported detector"):
        raise CheckpointError(f"{path} is not an exported DMR model (no {EXTRA_FILE} metadata); write it with "
                              f"`dmr export`")
    if meta["format"] != FORMAT_NAME:
        raise CheckpointError(f"{path} was written by an older `dmr export` ({meta['format']}); write it again")
    return meta


class ExportedDetector:
    """An exported file of any format behind the interface of ``TrainedDetector`` (``score``, ``describe``,
    ``class_names``), for ``dmr score --model``: it checks the input contract before calling the file, so a wrong
    image is one line, not a runtime's traceback."""

    def __init__(self, call, meta: dict, batch_size: int = 500) -> None:
        self.call, self.meta, self.batch_size = call, meta, batch_size
        self.class_names = list(meta.get("class_names") or [])
        self.combined = meta.get("combined")
        self.image_size = int(meta.get("image_size", 32))  # files written before sizes were stated are 32-px

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 500) -> "ExportedDetector":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"exported model {path} not found: write it with `dmr export {path}`")
        fmt = file_format(path)
        try:
            call, text = _LOADERS[fmt](path)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 -- each runtime raises its own types for foreign or damaged files
            raise CheckpointError(f"{path} is not an exported DMR model or is damaged ({type(err).__name__}); "
                                  f"write it again with `dmr export`") from None
        return cls(call, _load_meta(text, path), batch_size)

    def describe(self) -> dict:
        return {"source": "exported model", "feature": self.meta["feature"], "keep": self.meta["keep"],
                "threshold": self.meta["threshold"], "decision": self.meta["decision"],
                "threshold_rule": self.meta.get("threshold_rule", THRESHOLD_RULE), "class_names": self.class_names,
                "combined": self.combined}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(images)
        size = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be uint8 N×{size}×{size}×3, got {images.dtype} {images.shape}")
        parts = [self.call(images[start:start + self.batch_size])
                 for start in range(0, len(images), self.batch_size)]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}


def _load_pt2(path: Path):
    extra = {EXTRA_FILE: ""}
    module = torch.export.load(str(path), extra_files=extra).module()

    def call(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {key: value.numpy() for key, value in module(torch.from_numpy(images)).items()}

    return call, extra[EXTRA_FILE]


def _load_torchscript(path: Path):
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()

    def call(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {key: value.numpy() for key, value in module(torch.from_numpy(images)).items()}

    return call, extra[EXTRA_FILE]


def _load_onnx(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def call(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"images": images})))

    return call, session.get_modelmeta().custom_metadata_map.get(EXTRA_FILE)


_LOADERS = {"pt2": _load_pt2, "torchscript": _load_torchscript, "onnx": _load_onnx}
