"""The table of OOD-synthesis baselines DMR is compared with, each a function of the same sources and settings.

Every variant returns uint8 N×32×32×3 images that train a rejection head exactly as DMR's do, so that only the
synthesised set differs. Adding a variant means adding an entry to ``VARIANTS``; params validation and the
report read their names from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from .kirby import class_activation_maps, erase_and_inpaint
from .latent_mixing import sample_sources, synthesize_latents
from .mim import pixel_mixup


@dataclass(frozen=True)
class VariantConfig:
    """params.yaml section ``synth_baselines``, without ``variants``."""

    k: int
    lambda_dist: str
    lambda_min: float
    lambda_max: float
    num_samples: int
    kirby_threshold: float
    seed: int


@dataclass(frozen=True)
class SynthesisSources:
    """What the variants synthesise from. Array fields are array-likes (NumPy or zarr), read only by the variants
    that use them."""

    labels: np.ndarray                          # classes of the ID training images
    images: Any                                 # the ID training images, uint8 N×32×32×3
    latents: Any                                # the ID latents (stage latents): w = E(x) of each image, or sampled
    latent_labels: np.ndarray                   # the class of each latent
    class_means: Any                            # μ_y of each class
    decode: Callable[[np.ndarray], np.ndarray]  # G: latents → uint8 images
    feature_maps: Any                           # F's last feature map of each ID training image, N×C×H×W
    logits: Any                                 # F's logits of each
    class_weights: torch.Tensor                 # F's last linear layer (classes × C), for class activation maps


def latent_mixing(sources: SynthesisSources, config: VariantConfig, method: str, k: int | None = None) -> np.ndarray:
    """G of mixed latents: eq. 4 (``mlm``), eq. 6 (``dmr``, one latent) or eq. 7 (``dmr_mlm``)."""
    mixed, _, _ = synthesize_latents(
        np.asarray(sources.latents[:]), sources.latent_labels, np.asarray(sources.class_means[:]), method=method,
        k=config.k if k is None else k, num_samples=config.num_samples, lambda_dist=config.lambda_dist,
        lambda_min=config.lambda_min, lambda_max=config.lambda_max, seed=config.seed)
    return sources.decode(mixed)


def mim(sources: SynthesisSources, config: VariantConfig) -> np.ndarray:
    """Pixel-space mixup of k ID images from k distinct classes."""
    picked = sample_sources(sources.labels, config.k, config.num_samples, np.random.default_rng(config.seed))
    return pixel_mixup(np.asarray(sources.images[:]), picked)


def kirby(sources: SynthesisSources, config: VariantConfig) -> np.ndarray:
    """KIRBY: a seeded subset of the ID images with what F attends to (its CAM for the predicted class) erased
    and inpainted."""
    images = np.asarray(sources.images[:])
    chosen = np.sort(np.random.default_rng(config.seed).permutation(len(images))[: config.num_samples])
    feature_maps = torch.from_numpy(np.asarray(sources.feature_maps[:])[chosen]).float()
    predicted = torch.from_numpy(np.asarray(sources.logits[:])[chosen]).argmax(1)
    cams = class_activation_maps(feature_maps, sources.class_weights, predicted).numpy()
    return erase_and_inpaint(images[chosen], cams, config.kirby_threshold)


def dmr_kirby(sources: SynthesisSources, config: VariantConfig) -> np.ndarray:
    """The union of a DMR + MLM set (eq. 7, these settings) and a KIRBY set."""
    return np.concatenate([latent_mixing(sources, config, "dmr_mlm"), kirby(sources, config)])


@dataclass(frozen=True)
class Variant:
    title: str                                                      # its row in the report
    synthesise: Callable[[SynthesisSources, VariantConfig], np.ndarray]
    paper_table1_row: str | None = None                             # the paper's row for it, where it has one
    paper_table3_row: str | None = None


VARIANTS: dict[str, Variant] = {
    "mlm": Variant("MLM (eq. 4)", partial(latent_mixing, method="mlm"), paper_table3_row="MLM"),
    "dmr": Variant("DMR-single (eq. 6)", partial(latent_mixing, method="dmr", k=1), paper_table3_row="DMR-single"),
    "mim": Variant("MIM", mim, paper_table1_row="MIM"),
    "kirby": Variant("KIRBY", kirby, paper_table1_row="KIRBY"),
    "dmr_kirby": Variant("DMR + KIRBY", dmr_kirby),
}
