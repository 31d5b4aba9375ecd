"""Validated parameters: every key of ``params.yaml`` is checked before any work starts.

An invalid value fails with one line naming the key, the bad value and what is allowed, e.g.
``invalid params: synth.k = 11: Input should be less than or equal to 10 (the number of ID classes: ...)``.
Besides each key's own range, the checks cover what the params determine together, statically, so that
``dmr check-params`` saying ok means no stage rejects the file: the classifier's penultimate size bounds
``baselines.vim_dim``, the number of ID training images bounds ``baselines.knn_k``, and so on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import reprlib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .data.datasets import (
    DOWNLOADABLE_SETS,
    OFFLINE_ARCHIVES,
    OOD_SET_NAMES,
    OOD_SUITES,
    IdSetInfo,
    describe_id_set,
    download_dir,
    env_folder,
    is_path_spec,
    set_name,
    suite_sets,
    user_path,
)
from .data.leakage import path_relation
from .data.sources import is_archive
from .detectors.posthoc import DETECTORS
from .errors import DataError, ParamsError
from .images import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, downsampling_ladder
from .nets.classifier import (
    ARCH_NAMES,
    AUTO_INPUT_SIZE,
    DROPOUT_ARCHS,
    PRETRAINED_FILES,
    TORCHVISION_PREFIX,
    architecture_layout,
    input_size_problem,
)
from .nets.classifier_base import AUTO_LAYER
from .nets.features import REPRESENTATIONS
from .nets.external_generator import ENTRY_POINT
from .nets.generator import EXTERNAL_KIND, GENERATOR_KINDS, spatial_grid_cells
from .runtime.machine import memory_size
from .synthesis.detail import DETAIL_KINDS
from .synthesis.latent_mixing import LAMBDA_DISTRIBUTIONS, METHODS
from .synthesis.latent_routes import ROUTES
from .synthesis.variants import AUTO_COUNT, VARIANTS

# Seeds go to random, NumPy and torch generators; 32 bits is what all of them accept.
MAX_SEED = 2**32 - 1
# The variants that edit distinct ID training images, one per synthesised image, and those that read F's class
# activation maps, as the variant table says
TRAINING_IMAGE_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.edits_training_images)
CAM_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.reads_class_activation_maps)
# The names each choice allows come from the tables where the choices are implemented.
OodSuite = Literal[("auto", *OOD_SUITES)]
# The detectors that compute logits from the stored feature map (they rectify or prune it first).
FEATURE_MAP_LOGIT_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.representation == "feature_map")
DetectorName = Literal[tuple(DETECTORS)]
LambdaDistribution = Literal[LAMBDA_DISTRIBUTIONS]
Config = TypeVar("Config")


def _bounded(why: str, **constraints: Any) -> Any:
    """A Field whose range comes from the data, the network or a library rather than taste: ``why`` is added to
    the error message of a value outside it, so the user learns where the bound comes from."""
    return Field(**constraints, json_schema_extra={"bound": why})


# What one item of a count or size param takes in memory at least while its stage runs (32×32×3 images)
_PIXELS = 32 * 32 * 3
_FLOAT32_IMAGE = (_PIXELS * 4, "a float32 32×32×3 image of the batch")
_UINT8_IMAGE = (_PIXELS, "a uint8 32×32×3 image, the set held whole")
_FEATURE_ROW = (4 * 64, "a float32 row of at least 64 features")
# the costs that are one image of the run: they grow with the square of data.image_size
_PER_IMAGE = (_FLOAT32_IMAGE, _UINT8_IMAGE)


def _held_in_memory(cost: tuple[int, str], power: int = 1, **constraints: Any) -> Any:
    """A Field counting things a stage holds in memory at once, ``cost`` = (bytes each at least, as what), or with
    ``power`` 2 a width whose weights grow as its square: a value that this machine's memory cannot hold is
    refused before any work (a lower bound, so a value near it may still need more). An image of a batch or a set
    (``_PER_IMAGE``) is costed at 32 px here, and at data.image_size by :func:`_image_memory_problems`."""
    return Field(**constraints, json_schema_extra={"item_bytes": cost[0], "item": cost[1], "power": power,
                                                   "per_image": cost in _PER_IMAGE})


def memory_cost(field: Any) -> dict[str, Any] | None:
    """The cost a field declared with :func:`_held_in_memory` carries, itself or as the number of ``auto | number``
    (``Literal["auto"] | Annotated[int, _held_in_memory(...)]``); None for a field without one."""
    extras = [field.json_schema_extra]
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
        extras += [meta.json_schema_extra for member in typing.get_args(field.annotation)
                   if typing.get_origin(member) is Annotated for meta in member.__metadata__
                   if hasattr(meta, "json_schema_extra")]
    return next((extra for extra in extras if isinstance(extra, dict) and "item_bytes" in extra), None)


def memory_needed(value: int, extra: dict[str, Any]) -> int:
    """The least memory ``value`` of a key declared with :func:`_held_in_memory` needs, in bytes."""
    return value ** extra["power"] * extra["item_bytes"]


def _size_text(n: int) -> str:
    for power, unit in enumerate(("B", "KiB", "MiB", "GiB", "TiB")):
        if n < 1024 ** (power + 1):
            return f"{n} B" if power == 0 else f"{n / 1024 ** power:.1f} {unit}"
    petabytes = n // 1024 ** 5  # integer arithmetic: a value of any size must not overflow a float
    return f"{petabytes:,} PiB" if petabytes < 10 ** 6 else f"about 10^{len(str(petabytes)) - 1} PiB"


Seed = Annotated[int, _bounded(f"a seed is an integer in [0, {MAX_SEED}], what every random generator here accepts",
                               ge=0, le=MAX_SEED)]


class _Section(BaseModel):
    """One section of params.yaml. Rules every key shares live here, so a new key gets them without new code:
    no unknown keys, finite floats only (an inf or NaN would overflow or blank images far from its cause),
    no true/false for a number nor a number or string for true/false (YAML reads ``yes`` as true, and pydantic
    would take true as 1 and ``"off"`` as false), and no item listed twice in a list (an OOD set named twice
    would be evaluated and reported twice)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        numbers = {annotation} | {typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
                                  for a in typing.get_args(annotation)
                                  if typing.get_origin(annotation) in (typing.Union, types.UnionType)}
        if isinstance(value, bool) and numbers & {int, float}:
            raise ValueError("a number is needed here, not true/false")
        if annotation is bool and not isinstance(value, bool):
            raise ValueError("must be true or false")
        if isinstance(value, list) and typing.get_origin(annotation) is list and any(isinstance(v, bool) for v in value):
            item = typing.get_args(annotation)[0]
            if typing.get_origin(item) is Annotated and typing.get_args(item)[0] in (int, float):
                raise ValueError("a list of numbers is needed here, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _each_item_once(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item in value[:i]:
                    raise ValueError(f"{item!r} is listed twice; list each item once")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _fits_in_memory(cls, value: Any, info: ValidationInfo) -> Any:
        extra = memory_cost(cls.model_fields[info.field_name])
        if extra is not None and isinstance(value, int):
            needed, machine = memory_needed(value, extra), memory_size()
            if needed > machine:
                each = "for each" if extra["power"] == 1 else "times its square"
                raise ValueError(f"needs at least {_size_text(needed)} of memory ({_size_text(extra['item_bytes'])} "
                                 f"{each}, {extra['item']}) and this machine has {_size_text(machine)}; lower it")
        return value

    def to(self, config_class: type[Config]) -> Config:
        """The library's config dataclass built from this section's keys of the same names."""
        return config_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(config_class)})


class DataParams(_Section):
    id_set: str = Field(min_length=1, description="cifar10, cifar100 or the path of a folder / tar laid out "
                                                  "<split>/<class>/<image>")
    ood_sets: OodSuite | list[str] = Field(min_length=1)
    train_per_class: int = Field(ge=0, description="at most the images of the ID set's smallest class (checked in "
                                                   "Params)")
    test_per_class: int = Field(ge=0)
    ood_max: int = Field(ge=0)
    gaussian_count: int = _held_in_memory((_PIXELS * 8, "a float64 32×32×3 image, as the noise sets are drawn"),
                                          ge=1)
    ood_encoding: Literal["auto", "none", "jpeg"]
    ood_jpeg_quality: int = Field(ge=1, le=100, description="the JPEG quality of data.ood_encoding: jpeg")
    image_size: int = Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE, description="one of the sizes the nets build")
    seed: Seed

    @field_validator("image_size")
    @classmethod
    def _image_size_is_buildable(cls, value: int) -> int:
        downsampling_ladder(value)  # its ValueError lists the sizes that are
        return value

    @field_validator("id_set")
    @classmethod
    def _id_set_is_readable(cls, value: str) -> str:
        try:
            describe_id_set(value)  # the layout of a folder or tar is checked here, before any stage runs
        except DataError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("ood_sets", mode="before")
    @classmethod
    def _suite_or_list_of_names(cls, value: Any) -> Any:
        """One message for either form (a union's own would name its member types in the key)."""
        suites = ("auto", *OOD_SUITES)
        if isinstance(value, str) and value not in suites:
            raise ValueError(f"not a suite: use one of {', '.join(suites)}, or a list of OOD sets (names or paths)")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ValueError("every OOD set in the list is a name or a path (a string)")
        if not isinstance(value, (str, list)):
            raise ValueError(f"use one of {', '.join(suites)}, or a list of OOD sets (names or paths)")  # noqa: TRY004 -- pydantic reports ValueError
        return value

    @field_validator("ood_sets")
    @classmethod
    def _ood_sets_exist(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            return value
        names: dict[str, str] = {}
        for spec in value:
            if is_path_spec(spec):
                path = user_path(spec)
                if not (path.is_dir() or is_archive(path)):
                    raise ValueError(f"{spec!r}: {path} is not a folder or a .tar archive of images")
                if set_name(spec) in OOD_SET_NAMES:
                    raise ValueError(f"{spec!r} would be reported as {set_name(spec)!r}, the name of a built-in set; "
                                     "rename the folder or archive")
            elif spec not in OOD_SET_NAMES:
                raise ValueError(f"unknown OOD set {spec!r}: use one of {list(OOD_SET_NAMES)}, a suite "
                                 f"({', '.join(('auto', *OOD_SUITES))}) instead of a list, or the path of a folder "
                                 "or tar of images (./name for a folder in the project)")
            name = set_name(spec)
            if name in names:
                raise ValueError(f"{names[name]!r} and {spec!r} would both be reported as {name!r}; rename one")
            names[name] = spec
        return value


# Where a user's own classifier checkpoints go: the classifier stage lists this folder as a DVC dependency, so a
# new content of the file named by classifier.checkpoint re-runs it (a params value cannot name a dependency).
USER_CHECKPOINT_FOLDER = "models"
_ARCH_HINT = (f"choose one of {', '.join(n for n in ARCH_NAMES if not n.startswith(TORCHVISION_PREFIX))}, or "
              f"{TORCHVISION_PREFIX}<name> for a torchvision classification model (list the names with: python -c "
              "\"import torchvision.models as m; print(m.list_models(module=m))\")")


class ClassifierParams(_Section):
    arch: Literal[ARCH_NAMES]
    init: Literal["pretrained", "scratch", "checkpoint"]
    checkpoint: str | None
    epochs: int = Field(ge=0)
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    dropout: float = Field(ge=0, lt=1, description="> 0 only for the architectures that have a dropout (checked in "
                                                   "Params)")
    input_size: Literal["auto"] | Annotated[int, Field(ge=MIN_IMAGE_SIZE, le=1024)] = Field(
        description="auto, or the side a torchvision model's input is resized to")
    seed: Seed

    @field_validator("arch", mode="before")
    @classmethod
    def _known_arch(cls, value: Any) -> Any:
        # pydantic would list all the torchvision names; say how to see them instead
        if not (isinstance(value, str) and value in ARCH_NAMES):
            raise ValueError(f"unknown classifier arch; {_ARCH_HINT}")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_in_the_tracked_folder(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = Path(os.path.normpath(value)).parts
        if Path(value).is_absolute() or len(parts) < 2 or parts[0] != USER_CHECKPOINT_FOLDER:
            raise ValueError(f"put the checkpoint in the project's {USER_CHECKPOINT_FOLDER}/ folder and name it "
                             f"relative to the project root ({USER_CHECKPOINT_FOLDER}/<file>): the classifier stage "
                             "depends on that folder, so DVC re-runs it when the file changes")
        if not Path(value).is_file():
            raise ValueError("no such file (relative paths are taken from the project root)")
        return value


# an entry point's keyword arguments: names to scalars (a file path, a flag, a size), as YAML writes them
OptionValue = str | int | float | bool | None


class GeneratorParams(_Section):
    kind: Literal[(*GENERATOR_KINDS, EXTERNAL_KIND)]
    entry_point: str | None = Field(description="package.module:function, with kind: external")
    options: dict[str, OptionValue] = Field(description="keyword arguments for the entry point")
    latent_dim: int = _held_in_memory((4 * 4 * 4 * 4, "a float32 column of the decoder's first layer, at least "
                                                      "4×4×4 values"), ge=1)
    base_channels: int = _held_in_memory((9 * 4, "a float32 3×3 convolution of that many channels in and out"),
                                         power=2, ge=4)
    epochs: int = Field(ge=1)
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    lr: float = Field(gt=0)
    beta_kl: float = Field(ge=0)
    adversarial_weight: float = Field(ge=0)
    adversarial_start_epoch: int = Field(ge=0)
    perceptual_weight: float = Field(ge=0)
    perceptual_start_epoch: int = Field(ge=0)
    perceptual_images: int = Field(ge=1)
    seed: Seed

    @field_validator("entry_point")
    @classmethod
    def _entry_point_form(cls, value: str | None) -> str | None:
        if value is not None and not ENTRY_POINT.match(value):
            raise ValueError("must be of the form package.module:function (a function of an importable module)")
        return value


class LatentsParams(_Section):
    route: Literal[ROUTES]
    samples_per_class: int = _held_in_memory((4, "a float32 value of a sampled latent"), ge=0)
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    seed: Seed




class SynthParams(_Section):
    method: Literal[METHODS]
    k: int = Field(ge=1, description="at most the number of ID classes (checked in Params)")
    lambda_dist: LambdaDistribution
    lambda_min: float = Field(gt=0)
    lambda_max: float = Field(gt=0)
    normalise: bool
    detail: Literal[DETAIL_KINDS]
    detail_fraction: float = Field(gt=0, le=1)
    num_samples: int = _held_in_memory(_UINT8_IMAGE, ge=1)
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    encoding: Literal["match_id", "none"]
    seed: Seed


class FeaturesParams(_Section):
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    layer: str = Field(min_length=1, description="a module of the classifier, or auto (checked in Params)")
    max_grid: int = Field(ge=0, description="0 = the feature map as it comes; else its largest grid side")


class HeadParams(_Section):
    feature: Literal[REPRESENTATIONS]
    hidden: int = _held_in_memory(_FEATURE_ROW, ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = _held_in_memory(_FEATURE_ROW, ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    nesterov: bool
    weight_decay: float = Field(ge=0)
    schedule: Literal["cosine", "constant"]
    input_dropout: float = Field(ge=0, lt=1)
    synth_keep: float = Field(gt=0, le=1, description="the share of synthesised images the head trains on")
    seed: Seed


class BaselinesParams(_Section):
    detectors: list[DetectorName] = Field(min_length=1)
    vim_dim: int = Field(ge=1, description="below the classifier's penultimate size (checked in Params)")
    knn_k: int = Field(ge=1, description="at most the number of ID training images (checked in Params)")
    react_percentile: float = Field(gt=0, lt=1)
    dice_p: float = Field(gt=0, lt=1)
    ash_percentile: float = Field(gt=0, lt=1)
    odin_eps: float = Field(ge=0)
    odin_temperature: float = Field(gt=0)
    batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    reference_images: int = Field(ge=2, description="ID-train images whose scores set each score's scale; at most "
                                                    "the number of ID training images (checked in Params)")
    reference_seed: Seed
    # Outlier Exposure (stage outlier_exposure): None = the row is not run
    oe_outliers: str | None = Field(description="the path of a folder or tar of outlier images; never an OOD test "
                                                "set (checked in Params)")
    oe_max_outliers: int = Field(ge=0)
    oe_epochs: int = Field(ge=1)
    oe_batch_size: int = _held_in_memory(_FLOAT32_IMAGE, ge=1)
    oe_lr: float = Field(gt=0)
    oe_alpha: float = Field(gt=0)
    oe_seed: Seed

    @field_validator("oe_outliers")
    @classmethod
    def _outliers_are_a_folder_or_tar(cls, value: str | None) -> str | None:
        """A folder or tar, and not a built-in OOD set by its name (the set's own files, or a copy of them)."""
        if value is None:
            return value
        if not value.strip():
            raise ValueError("empty: give the path of a folder or tar of outlier images, or null to skip the OE row")
        if set_name(value) in OOD_SET_NAMES:
            raise ValueError(f"{set_name(value)!r} is the name of a built-in OOD test set, and Outlier Exposure "
                             "must never train on a test set; give a folder or tar of other images (if it holds "
                             "other images, rename it)")
        path = user_path(value)
        if not is_path_spec(value) or not (path.is_dir() or is_archive(path)):
            raise ValueError(f"{path} is not a folder or a .tar archive of images (relative paths are taken from "
                             "the project root; ./name for a folder in the project)")
        return value


class SynthBaselinesParams(_Section):
    # at least one: the report stage reads the folder the variants write
    variants: list[Literal[tuple(VARIANTS)]] = Field(min_length=1)
    k: int = Field(ge=1, description="at most the number of ID classes (checked in Params)")
    lambda_dist: LambdaDistribution
    lambda_min: float = Field(gt=0)
    lambda_max: float = Field(gt=0)
    num_samples: Literal["auto"] | Annotated[int, _held_in_memory(_UINT8_IMAGE, ge=1)] = Field(
        description="auto = synth.num_samples, capped at the ID training images for a variant that edits them")
    kirby_threshold: float = Field(gt=0, lt=1)
    saliency_share: float = Field(gt=0, lt=1, description="the share of pixels saliency_shuffle permutes")
    seed: Seed


class EvalParams(_Section):
    histogram_bins: int = _held_in_memory((8, "a float64 bin count"), ge=2)
    roc_points: int = _held_in_memory((16, "a float64 (FPR, TPR) pair"), ge=2)
    # the shares of ID test images kept at which thresholds are stored (0.95, the default decision, always is)
    keep_rates: list[Annotated[float, Field(gt=0, le=1)]] = Field(min_length=1)


class FiguresParams(_Section):
    # at least one row each; rows with k above the number of ID classes are left out of the figure
    ks: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    lambdas: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    fixed_k: int = Field(ge=1, description="capped at the number of ID classes")
    fixed_lambda: float = Field(gt=0)
    columns: int = Field(ge=1, le=64)
    seed: Seed


class CombineParams(_Section):
    # one Literal, not a union: a union's error would name its member types in the key
    detector: Literal[(*DETECTORS, "none")]


def penultimate_size(arch: str) -> int:
    """Width of ``arch``'s penultimate layer (what ViM and KNN read): the in-features of its classification layer,
    read off the architecture built on the meta device (no memory, no weights, any class count), so that a new
    architecture needs no second table here."""
    return architecture_layout(arch).penultimate_size


def id_train_images(data: DataParams) -> tuple[int, str]:
    """How many ID training images the data stage keeps, and where that number comes from (for messages)."""
    info = describe_id_set(data.id_set)
    classes = len(info.class_names)
    if data.train_per_class == 0:
        total = info.images["train"]
        return total, f"all {total:,} of {info.name}'s training split, data.train_per_class = 0"
    total = data.train_per_class * classes
    return total, f"data.train_per_class = {data.train_per_class} × {classes} classes"


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
    figures: FiguresParams

    @model_validator(mode="after")
    def _rules_across_keys(self) -> Params:
        """The rules that involve more than one key, in one place; the first broken one is reported, naming
        every key it involves in dotted form (what ``dvc exp run -S`` takes)."""
        for problem in _problems(self):
            raise ValueError(problem)
        return self


def _data_problems(d: DataParams, info: IdSetInfo) -> Iterator[str]:
    """What the ID set allows of the data section: subsets no larger than its smallest class, and no OOD set that
    is the ID set itself."""
    for split in ("train", "test"):
        asked, fewest = getattr(d, f"{split}_per_class"), info.min_images_per_class[split]
        if asked > fewest:
            yield (f"data.{split}_per_class = {asked}: {info.name}'s smallest class has {fewest:,} {split} images "
                   f"(data.id_set = {d.id_set!r}); lower it, or 0 for every image")
    if isinstance(d.ood_sets, list) and info.name in (set_name(s) for s in d.ood_sets):
        yield (f"data.ood_sets lists {info.name!r}, the ID set (data.id_set = {d.id_set!r}): a set cannot be its own "
               "OOD set; remove it")


def _generator_problems(p: Params) -> Iterator[str]:
    """Which generator can give which latents: a user's generator needs its entry point, the sampled route a
    mapping network, and sampled latents have no residual detail to add back."""
    g, route = p.generator, p.latents.route
    if g.kind == EXTERNAL_KIND:
        if g.entry_point is None:
            yield ("generator.kind = 'external' with generator.entry_point = None: name the function that loads your "
                   "generator (generator.entry_point: package.module:function)")
        elif importlib.util.find_spec(g.entry_point.split(":")[0].split(".")[0]) is None:
            yield (f"generator.entry_point = {g.entry_point!r}: no module {g.entry_point.split(':')[0]!r} on the "
                   "Python path (run from the project root, or install your package)")
        for term in ("adversarial", "perceptual"):
            if getattr(g, f"{term}_weight") > 0:
                yield (f"generator.{term}_weight = {getattr(g, f'{term}_weight')} with generator.kind = 'external': "
                       f"an external generator is not trained here; set generator.{term}_weight: 0")
    else:
        if g.entry_point is not None:
            yield (f"generator.entry_point = {g.entry_point!r} with generator.kind = {g.kind!r}: set generator.kind: "
                   "external to use your generator, or generator.entry_point: null")
        if g.options:
            yield (f"generator.options = {g.options!r} with generator.kind = {g.kind!r}: options are for an external "
                   "generator's entry point; set generator.options: {}")
    if route == "sampled" and g.kind in GENERATOR_KINDS and not GENERATOR_KINDS[g.kind].conditional:
        conditional = [kind for kind, model in GENERATOR_KINDS.items() if model.conditional]
        yield (f"latents.route = 'sampled' with generator.kind = {g.kind!r}: sampling w = M(z, c) per class needs a "
               f"class-conditional generator with a mapping network ({', '.join(conditional)}, or external with a "
               "mapping); set latents.route: encoded or change generator.kind")
    if route == "sampled" and p.synth.detail != "none":
        yield (f"synth.detail = {p.synth.detail!r} with latents.route = 'sampled': no image stands behind a sampled "
               "latent, so there is no residual detail to add; set synth.detail: none")
    if route == "encoded" and p.latents.samples_per_class:
        yield (f"latents.samples_per_class = {p.latents.samples_per_class} with latents.route = 'encoded': the encoded "
               "route takes every ID training image once; set latents.samples_per_class: 0")


def _test_set_locations(d: DataParams, info: IdSetInfo) -> Iterator[tuple[str, Path]]:
    """(what, where) for every file or folder a test image of this run may be read from: each OOD test set of
    data.ood_sets (a user's path, an offline archive, the download folder) and the ID test split. A suite counts
    with every set it may stand for (``auto`` is decided only when the data stage runs)."""
    if isinstance(d.ood_sets, list):
        specs = list(d.ood_sets)
    else:
        suites = OOD_SUITES if d.ood_sets == "auto" else (d.ood_sets,)
        specs = list(dict.fromkeys(s for suite in suites for s in suite_sets(suite, d.id_set)))
    home = env_folder("DMR_DATA_HOME")
    for spec in specs:
        what = f"the OOD test set {set_name(spec)!r} of data.ood_sets"
        if is_path_spec(spec):
            yield what, user_path(spec)
        elif spec in OFFLINE_ARCHIVES and home is not None:
            yield what, home / OFFLINE_ARCHIVES[spec][0]
    downloaded = [spec for spec in specs if spec in DOWNLOADABLE_SETS]
    if downloaded:
        yield f"the download folder of the OOD test sets {', '.join(downloaded)} of data.ood_sets", download_dir()
    what = f"the ID test split (data.id_set = {d.id_set!r})"
    if info.source is not None:
        yield what, info.source if is_archive(info.source) else info.source.joinpath(*info.top.parts, "test")
    else:
        if home is not None:
            yield what, home / OFFLINE_ARCHIVES[d.id_set][0]
        yield f"the download folder of {what}", download_dir()


def _outlier_problems(p: Params, info: IdSetInfo) -> Iterator[str]:
    """Outlier Exposure's outliers must not be, hold or lie inside the files of a test set of the run (the stage
    then refuses outlier images identical to test images, which no path shows)."""
    outliers = p.baselines.oe_outliers
    if outliers is None:
        return
    for what, location in _test_set_locations(p.data, info):
        relation = path_relation(user_path(outliers), location)
        if relation is not None:
            yield (f"baselines.oe_outliers = {outliers!r} {relation} {what} ({location}): Outlier Exposure must "
                   "never train on a test set; give a folder or tar of other images")
            return


def _image_memory_problems(p: Params) -> Iterator[str]:
    """A batch or set of images that this machine's memory cannot hold at data.image_size (each key's own check
    costs its images at 32 px)."""
    scale = (p.data.image_size / 32) ** 2
    if scale <= 1:
        return
    for section_name, section_field in Params.model_fields.items():
        section = getattr(p, section_name)
        for key, field in section_field.annotation.model_fields.items():
            extra, value = memory_cost(field), getattr(section, key)
            if extra is None or not extra.get("per_image") or not isinstance(value, int):
                continue
            needed, machine = memory_needed(value, extra) * scale, memory_size()
            if needed > machine:
                side = p.data.image_size
                item = extra["item"].replace("32×32", f"{side}×{side}")
                yield (f"{section_name}.{key} = {value} with data.image_size = {side}: needs at least "
                       f"{_size_text(int(needed))} of memory ({_size_text(int(extra['item_bytes'] * scale))} for "
                       f"each, {item}) and this machine has {_size_text(machine)}; lower it or data.image_size")


def _problems(p: Params) -> Iterator[str]:
    """Each broken rule across keys, as one line naming the keys involved."""
    info = describe_id_set(p.data.id_set)
    yield from _image_memory_problems(p)
    yield from _data_problems(p.data, info)
    yield from _outlier_problems(p, info)
    classes = len(info.class_names)
    for name, k in (("synth.k", p.synth.k), ("synth_baselines.k", p.synth_baselines.k)):
        if k > classes:
            yield (f"{name} = {k}: at most the number of ID classes, {classes} (data.id_set = {p.data.id_set!r}), "
                   "as the k mixed latents or images come from k distinct classes; lower it")
    c = p.classifier
    if c.init == "pretrained" and c.arch not in PRETRAINED_FILES and not c.arch.startswith(TORCHVISION_PREFIX):
        yield (f"classifier.init = 'pretrained' with classifier.arch = {c.arch!r}: pretrained weights exist for "
               f"{', '.join(PRETRAINED_FILES)} and the {TORCHVISION_PREFIX}<name> models only; set classifier.init: "
               "scratch")
    if c.dropout > 0 and c.arch not in DROPOUT_ARCHS:
        yield (f"classifier.dropout = {c.dropout} with classifier.arch = {c.arch!r}: only "
               f"{', '.join(DROPOUT_ARCHS)} {'has' if len(DROPOUT_ARCHS) == 1 else 'have'} a dropout; set "
               "classifier.dropout: 0")
    if c.init == "scratch" and c.epochs == 0:
        yield ("classifier.init = 'scratch' with classifier.epochs = 0 would evaluate an untrained classifier; set "
               "classifier.epochs >= 1")
    # one key says where the weights come from; a checkpoint beside another init would leave the reader guessing
    if c.checkpoint is not None and c.init != "checkpoint":
        yield (f"classifier.checkpoint = {c.checkpoint!r} with classifier.init = {c.init!r}: set classifier.init: "
               "checkpoint to start from that file, or classifier.checkpoint: null")
    if c.init == "checkpoint" and c.checkpoint is None:
        yield ("classifier.init = 'checkpoint' with classifier.checkpoint = None: name your checkpoint file "
               f"(classifier.checkpoint: {USER_CHECKPOINT_FOLDER}/<file>), or set classifier.init: pretrained or "
               "scratch")

    if c.input_size != AUTO_INPUT_SIZE and not c.arch.startswith(TORCHVISION_PREFIX):
        yield (f"classifier.input_size = {c.input_size} with classifier.arch = {c.arch!r}: only a torchvision model "
               "resizes its input; the CIFAR-stem nets are built for the data's size (data.image_size); set "
               "classifier.input_size: auto")
    elif c.arch.startswith(TORCHVISION_PREFIX) and (
            problem := input_size_problem(c.arch, p.data.image_size, c.input_size)) is not None:
        yield problem

    # The representation the head reads: a module of the classifier, known from the architecture alone.
    layout = architecture_layout(c.arch)
    layer = p.features.layer
    if layer != AUTO_LAYER and layer not in layout.layers:
        top = [name for name in layout.layers if "." not in name][-10:]
        dotted = [name for name in layout.layers if "." in name]
        example = f" or a submodule such as {dotted[-1]}" if dotted else ""
        yield (f"features.layer = {layer!r}: {c.arch} has no such module running before its classification layer; "
               f"use auto ({layout.default_layer}), one of {', '.join(top)}{example}")
    elif (layout.default_layer if layer == AUTO_LAYER else layer) != layout.pooled_layer:
        module = layout.default_layer if layer == AUTO_LAYER else layer
        needing = [d for d in p.baselines.detectors if d in FEATURE_MAP_LOGIT_DETECTORS]
        needing += [v for v in p.synth_baselines.variants if v in CAM_VARIANTS]
        if needing:
            yield (f"{', '.join(needing)} compute logits from the feature map (global average, then the "
                   f"classification layer), which holds for features.layer = {layer!r} (module {module!r}) of "
                   f"classifier.arch = {c.arch!r} only where that module pools into the classification layer (the "
                   "built-in architectures with features.layer: auto); drop them from baselines.detectors / "
                   "synth_baselines.variants or change features.layer")
    if p.generator.perceptual_weight > 0 and not layout.stage_layers:
        yield (f"generator.perceptual_weight = {p.generator.perceptual_weight} with classifier.arch = {c.arch!r}: the "
               "perceptual term compares the classifier's resolution stages, which only the built-in architectures "
               "name; set generator.perceptual_weight: 0 or use a built-in classifier.arch")

    g = p.generator
    cells = spatial_grid_cells(p.data.image_size)
    if g.kind == "spatial_vae" and g.latent_dim % cells:
        side = round(cells ** 0.5)
        yield (f"generator.latent_dim = {g.latent_dim} with generator.kind = spatial_vae and data.image_size = "
               f"{p.data.image_size}: the latent is channels on a {side}×{side} grid, so generator.latent_dim must "
               f"be a multiple of {cells} (e.g. {16 * cells})")
    yield from _generator_problems(p)
    for term in ("adversarial", "perceptual"):
        start = getattr(g, f"{term}_start_epoch")
        if getattr(g, f"{term}_weight") > 0 and start >= g.epochs:
            yield (f"generator.{term}_start_epoch = {start} with generator.epochs = {g.epochs}: the {term} term "
                   f"would never be used; set generator.{term}_start_epoch below generator.epochs or "
                   f"generator.{term}_weight to 0")
    if g.perceptual_weight > 0 and g.perceptual_images > g.batch_size:
        yield (f"generator.perceptual_images = {g.perceptual_images} with generator.batch_size = {g.batch_size}: the "
               "perceptual term is measured on images of one batch; set generator.perceptual_images <= "
               "generator.batch_size")

    for name in ("synth", "synth_baselines"):
        section = getattr(p, name)
        if section.lambda_min > section.lambda_max:
            yield (f"{name}.lambda_min = {section.lambda_min} > {name}.lambda_max = {section.lambda_max}: need "
                   "lambda_min <= lambda_max")
    if p.synth.method == "dmr" and p.synth.k != 1:
        yield (f"synth.k = {p.synth.k} with synth.method = 'dmr' (eq. 6, a single latent): set synth.k: 1 or use "
               "synth.method: dmr_mlm")

    # What the network and the data allow, known from the params alone (before any stage runs).
    b = p.baselines
    width = penultimate_size(c.arch)
    if b.vim_dim >= width:
        yield (f"baselines.vim_dim = {b.vim_dim}: must be below the penultimate size of {c.arch} ({width}), as "
               "ViM scores what lies outside its vim_dim-dimensional principal subspace; lower it or change "
               "classifier.arch")
    train, source = id_train_images(p.data)
    held = train * p.data.image_size ** 2 * 3
    if held > memory_size():
        yield (f"data.image_size = {p.data.image_size}: the stages hold the ID training set whole, {train:,} images "
               f"({source}) of {p.data.image_size}×{p.data.image_size}×3 bytes = {_size_text(held)}, and this machine "
               f"has {_size_text(memory_size())}; lower data.image_size or data.train_per_class")
    if b.knn_k > train:
        yield (f"baselines.knn_k = {b.knn_k}: must be at most the number of ID training images, {train:,} "
               f"({source}), among which KNN finds the neighbours; lower it or raise data.train_per_class")
    if b.reference_images > train:
        yield (f"baselines.reference_images = {b.reference_images}: must be at most the number of ID training "
               f"images, {train:,} ({source}), as the reference is a subset of them; lower it or raise "
               "data.train_per_class")
    s = p.synth_baselines
    editing = [v for v in s.variants if v in TRAINING_IMAGE_VARIANTS]
    if editing and s.num_samples != AUTO_COUNT and s.num_samples > train:
        yield (f"synth_baselines.num_samples = {s.num_samples} with {', '.join(editing)} in "
               f"synth_baselines.variants: must be at most the number of ID training images, {train:,} ({source}), "
               "as each of them edits every chosen training image once; lower it, set it to auto or drop those "
               "variants")

    if p.combine.detector not in ("none", *b.detectors):
        yield (f"combine.detector = {p.combine.detector!r} is not among baselines.detectors; add it there or set "
               "combine.detector: none")


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _short_repr() -> reprlib.Repr:
    """repr of a bad value, cut short: a huge list or string must not swamp the one-line message."""
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxlong = 60, 60, 6, 24
    return short


_short = _short_repr()


def _bound_reason(loc: tuple) -> str | None:
    """The ``why`` of a section key declared with :func:`_bounded`, if ``loc`` is one."""
    if len(loc) != 2 or loc[0] not in Params.model_fields:
        return None
    section = Params.model_fields[loc[0]].annotation
    field = section.model_fields.get(loc[1]) if isinstance(loc[1], str) else None
    extra = field.json_schema_extra if field is not None else None
    return extra.get("bound") if isinstance(extra, dict) else None


def _first_error(err: ValidationError) -> str:
    """The first validation error as one line: ``<dotted key> = <value>: <what is allowed>``."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(part) for part in loc)
    msg = " ".join(e["msg"].removeprefix("Value error, ").split())
    if e["type"] == "missing":
        return f"{key}: missing key (see the default params.yaml for its meaning)"
    if e["type"] == "extra_forbidden":
        return f"{key}: unknown key (a typo? allowed keys are those of the default params.yaml)"
    if e["type"] == "int_parsing_size":  # pydantic's text speaks of a string even for a float
        msg = "too large for an integer"
    if e["type"] in _RANGE_ERRORS and (why := _bound_reason(loc)):
        msg = f"{msg} ({why})"
    if not key:  # a rule across keys names its keys itself
        return msg
    if isinstance(e.get("input"), dict):  # a whole section of the wrong shape
        return f"{key}: {msg}"
    return f"{key} = {_short.repr(e.get('input'))}: {msg}"


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (the content of params.yaml); any problem is a one-line :class:`ParamsError`."""
    if not isinstance(raw, dict):
        raise ParamsError(f"invalid params: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"invalid params: {_first_error(err)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML would keep the last one silently,
    while DVC (which reads params.yaml too) refuses the file, so ``dmr check-params`` must refuse it as well."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden; not a repeat
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping",
                                                        key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans several lines)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def read_params_file(path: str | Path) -> Any:
    """The content of a params file, or a one-line :class:`ParamsError` saying why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"invalid params: {path} not found; run from the project root")
    if path.is_dir():
        raise ParamsError(f"invalid params: {path} is a folder, not a params file; name the params.yaml file")
    if not path.is_file():
        raise ParamsError(f"invalid params: {path} is not a regular file; name the params.yaml file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ParamsError(f"invalid params: cannot read {path} ({err.strerror or err}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as err:
        raise ParamsError(f"invalid params: {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise ParamsError(f"invalid params: {path} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ParamsError(f"invalid params: {path} is not valid YAML: nested too deeply") from None
    if raw is None:
        raise ParamsError(f"invalid params: {path} is empty; start from the default params.yaml")
    if not isinstance(raw, dict):
        raise ParamsError(f"invalid params: {path} holds a {type(raw).__name__}, not a mapping of sections "
                          "(data:, classifier:, …); start from the default params.yaml")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``: any problem, with the file or a value, is one :class:`ParamsError`."""
    return parse_params(read_params_file(path))
