"""Validated parameters: every key of ``params.yaml`` is checked before any work starts.

An invalid value fails with one line naming the key, the bad value and what is allowed, e.g.
``invalid params: synth.k = 11: must be <= 10 (the number of ID classes)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .data.datasets import CIFAR10_CLASSES, OOD_SET_NAMES
from .detectors.posthoc import DETECTORS
from .errors import ParamsError
from .nets.classifier import ARCHITECTURES
from .nets.features import REPRESENTATIONS
from .nets.generator import GENERATOR_KINDS
from .synthesis.detail import DETAIL_KINDS
from .synthesis.latent_mixing import LAMBDA_DISTRIBUTIONS, METHODS
from .synthesis.variants import VARIANTS

# The names each choice allows come from the tables where the choices are implemented.
NUM_ID_CLASSES = len(CIFAR10_CLASSES)
OodSetName = Literal[OOD_SET_NAMES]
DetectorName = Literal[tuple(DETECTORS)]
LambdaDistribution = Literal[LAMBDA_DISTRIBUTIONS]
Config = TypeVar("Config")


def _check_lambda_range(lambda_min: float, lambda_max: float) -> None:
    if lambda_min > lambda_max:
        raise ValueError(f"lambda_min = {lambda_min} > lambda_max = {lambda_max}: need lambda_min <= lambda_max")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to(self, config_class: type[Config]) -> Config:
        """The library's config dataclass built from this section's keys of the same names."""
        return config_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(config_class)})


class DataParams(_Section):
    ood_sets: list[OodSetName] = Field(min_length=1)
    train_per_class: int = Field(ge=0, description="0 = all images")
    test_per_class: int = Field(ge=0)
    ood_max: int = Field(ge=0)
    gaussian_count: int = Field(ge=1)
    seed: int = Field(ge=0)


class ClassifierParams(_Section):
    arch: Literal[tuple(ARCHITECTURES)]
    init: Literal["pretrained", "scratch"]
    epochs: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _pretrained_exists(self) -> "ClassifierParams":
        if self.init == "pretrained" and self.arch == "wrn40_2":
            raise ValueError("init = 'pretrained' is available for resnet20/32/44/56 only; use init: scratch for wrn40_2")
        if self.init == "scratch" and self.epochs == 0:
            raise ValueError("init = 'scratch' with epochs = 0 would evaluate an untrained classifier")
        return self


class GeneratorParams(_Section):
    kind: Literal[tuple(GENERATOR_KINDS)]
    latent_dim: int = Field(ge=1)
    base_channels: int = Field(ge=4)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    beta_kl: float = Field(ge=0)
    adversarial_weight: float = Field(ge=0)
    adversarial_start_epoch: int = Field(ge=0)
    perceptual_weight: float = Field(ge=0)
    perceptual_start_epoch: int = Field(ge=0)
    perceptual_images: int = Field(ge=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "GeneratorParams":
        if self.kind == "spatial_vae" and self.latent_dim % 16:
            raise ValueError(f"latent_dim = {self.latent_dim} with kind spatial_vae: the latent is channels on a 4×4 "
                             "grid, so latent_dim must be a multiple of 16 (e.g. 256)")
        for term in ("adversarial", "perceptual"):
            start = getattr(self, f"{term}_start_epoch")
            if getattr(self, f"{term}_weight") > 0 and start >= self.epochs:
                raise ValueError(f"{term}_start_epoch = {start} with epochs = {self.epochs}: the {term} term would never "
                                 f"be used; set {term}_start_epoch below epochs or {term}_weight to 0")
        return self


class LatentsParams(_Section):
    batch_size: int = Field(ge=1)


class SynthParams(_Section):
    method: Literal[METHODS]
    k: int = Field(ge=1, le=NUM_ID_CLASSES)
    lambda_dist: LambdaDistribution
    lambda_min: float = Field(gt=0)
    lambda_max: float = Field(gt=0)
    normalise: bool
    detail: Literal[DETAIL_KINDS]
    detail_fraction: float = Field(gt=0, le=1)
    num_samples: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> "SynthParams":
        _check_lambda_range(self.lambda_min, self.lambda_max)
        if self.method == "dmr" and self.k != 1:
            raise ValueError(f"k = {self.k} with method 'dmr' (eq. 6, a single latent): set k: 1 or use dmr_mlm")
        return self


class FeaturesParams(_Section):
    batch_size: int = Field(ge=1)


class HeadParams(_Section):
    feature: Literal[REPRESENTATIONS]
    hidden: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    nesterov: bool
    weight_decay: float = Field(ge=0)
    schedule: Literal["cosine", "constant"]
    input_dropout: float = Field(ge=0, lt=1)
    seed: int = Field(ge=0)


class BaselinesParams(_Section):
    detectors: list[DetectorName] = Field(min_length=1)
    vim_dim: int = Field(ge=1)
    knn_k: int = Field(ge=1)
    react_percentile: float = Field(gt=0, lt=1)
    dice_p: float = Field(gt=0, lt=1)
    ash_percentile: float = Field(gt=0, lt=1)
    odin_eps: float = Field(ge=0)
    odin_temperature: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    reference_images: int = Field(ge=2, description="ID-train images whose scores set each score's scale")
    reference_seed: int = Field(ge=0)


class SynthBaselinesParams(_Section):
    variants: list[Literal[tuple(VARIANTS)]]
    k: int = Field(ge=1, le=NUM_ID_CLASSES)
    lambda_dist: LambdaDistribution
    lambda_min: float = Field(gt=0)
    lambda_max: float = Field(gt=0)
    num_samples: int = Field(ge=1)
    kirby_threshold: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> "SynthBaselinesParams":
        _check_lambda_range(self.lambda_min, self.lambda_max)
        return self


class EvalParams(_Section):
    histogram_bins: int = Field(ge=2)
    roc_points: int = Field(ge=2)


class CombineParams(_Section):
    detector: DetectorName | Literal["none"]


class Params(_Section):
    data: DataParams
    classifier: ClassifierParams
    generator: GeneratorParams
    latents: LatentsParams
    synth: SynthParams
    features: FeaturesParams
    head: HeadParams
    eval: EvalParams
    baselines: BaselinesParams
    combine: CombineParams
    synth_baselines: SynthBaselinesParams

    @model_validator(mode="after")
    def _combined_detector_is_scored(self) -> "Params":
        if self.combine.detector not in ("none", *self.baselines.detectors):
            raise ValueError(f"combine.detector = {self.combine.detector!r} is not among baselines.detectors; add it "
                             "there or set combine.detector: none")
        return self


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"{key}: missing key (see the default params.yaml for its meaning)"
    if e["type"] == "extra_forbidden":
        return f"{key}: unknown key (a typo? allowed keys are those of the default params.yaml)"
    if not key:  # a check across sections
        return msg
    if isinstance(e.get("input"), dict):  # a check across keys of one section
        return f"{key}: {msg}"
    return f"{key} = {e.get('input')!r}: {msg}"


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (the content of params.yaml)."""
    if not isinstance(raw, dict):
        raise ParamsError("invalid params: the file must hold a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"invalid params: {_first_error(err)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"invalid params: {path} not found; run from the project root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"invalid params: {path} is not valid YAML: {err}") from None
    return parse_params(raw)
