"""The table of OOD-synthesis baselines DMR is compared with, each a function of the same sources and settings.

A variant returns either uint8 N×S×S×3 images, which train a rejection head exactly as DMR's do (F's features of
them against the ID training features), or ``SynthesisedFeatures``: a set synthesised directly in the
representation the head reads, which trains the head as it is. Either way only the synthesised set differs.
Adding a variant means adding an entry to ``VARIANTS``; params validation and the report read their names from
here, and ``synthesis.baseline`` trains the head on (and pictures) whichever kind a variant returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ..data.streams import take_rows
from .kirby import class_activation_maps, erase_and_inpaint
from .latent_mixing import class_means, sample_sources, synthesize_latents
from .mim import pixel_mixup
from .saliency_shuffle import input_saliency, shuffle_salient_pixels


@dataclass(frozen=True)
class VariantConfig:
    """params.yaml section ``synth_baselines``, without ``variants``."""

    k: int
    lambda_dist: str
    lambda_min: float
    lambda_max: float
    num_samples: int              # resolved: :func:`variant_sample_count`
    kirby_threshold: float
    saliency_share: float
    seed: int


# synth_baselines.num_samples: auto
AUTO_COUNT = "auto"


def variant_sample_count(variant: str, asked: int | str, dmr_count: int, training_images: int) -> int:
    """How many images ``variant`` synthesises: ``asked``, or with ``auto`` as many as DMR's head trains on
    (``dmr_count``, synth.num_samples) so only the synthesised set differs, capped at the ``training_images`` for
    a variant that edits each chosen training image once (KIRBY), which cannot make more."""
    if asked != AUTO_COUNT:
        return int(asked)
    return min(dmr_count, training_images) if VARIANTS[variant].edits_training_images else dmr_count


@dataclass(frozen=True)
class SynthesisSources:
    """What the variants synthesise from. Array fields are array-likes (NumPy or zarr), read only by the variants
    that use them."""

    labels: np.ndarray                          # classes of the ID training images
    images: Any                                 # the ID training images, uint8 N×S×S×3
    latents: Any                                # the ID latents (stage latents): w = E(x) of each image, or sampled
    latent_labels: np.ndarray                   # the class of each latent
    class_means: Any                            # μ_y of each class
    decode: Callable[[np.ndarray], np.ndarray]  # G: latents → uint8 images
    feature_maps: Any                           # F's last feature map of each ID training image, N×C×H×W
    logits: Any                                 # F's logits of each
    class_weights: torch.Tensor                 # F's last linear layer (classes × C), for class activation maps
    id_features: Any                            # F's representation the head reads (head.feature) of each
    classifier: Any = None                      # F itself, for the variants that need its gradients


@dataclass(frozen=True)
class SynthesisedFeatures:
    """A synthesised OOD set given in F's representation that the head reads (``head.feature``), N × its shape,
    instead of as images: the head trains on it as it is, with no image and no feature extraction in between."""

    features: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


Synthesised = np.ndarray | SynthesisedFeatures  # what a variant returns: uint8 images, or features


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
    chosen = np.sort(np.random.default_rng(config.seed).permutation(len(sources.labels))[: config.num_samples])
    images = take_rows(sources.images, chosen)
    feature_maps = torch.from_numpy(take_rows(sources.feature_maps, chosen)).float()
    predicted = torch.from_numpy(take_rows(sources.logits, chosen)).argmax(1)
    cams = class_activation_maps(feature_maps, sources.class_weights, predicted, size=images.shape[1]).numpy()
    return erase_and_inpaint(images, cams, config.kirby_threshold)


def saliency_shuffle(sources: SynthesisSources, config: VariantConfig) -> np.ndarray:
    """ASCOOD's outliers: a seeded subset of the ID images, each with the pixels its true class's gradient marks
    most shuffled among themselves (:mod:`.saliency_shuffle`)."""
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.permutation(len(sources.labels))[: config.num_samples])
    images = take_rows(sources.images, chosen)
    saliency = input_saliency(sources.classifier, images, np.asarray(sources.labels)[chosen])
    return shuffle_salient_pixels(images, saliency, config.saliency_share, rng)


def dmr_kirby(sources: SynthesisSources, config: VariantConfig) -> np.ndarray:
    """The union of a DMR + MLM set (eq. 7, these settings) and a KIRBY set."""
    return np.concatenate([latent_mixing(sources, config, "dmr_mlm"), kirby(sources, config)])


# samples mixed at a time by feature_dmr: bounds the gathered k source feature maps per sample (all 25,000 × 5 of
# resnet20's 64×8×8 at once take some 5 GB); each sample is mixed on its own, so the result does not depend on it
FEATURE_MIX_ROWS = 1000


def feature_dmr(sources: SynthesisSources, config: VariantConfig) -> SynthesisedFeatures:
    """The feature-space ablation of DMR: eq. 7 applied to the frozen classifier's own representation instead of a
    generator's latent, i.e. E = the layer of F the head reads and no decoding:

        f_ood = λ · (1/k) Σ_i (f_i − μ^F_{y_i}),   μ^F_y = the mean of f over the ID training images of class y,

    with f = F's ``head.feature`` representation of the ID training images (the features stage), the k sources
    from k distinct classes and λ drawn as for the latent variants (``synthesize_latents``, these settings;
    k = 1 gives eq. 6). The head then trains on f_ood directly: the row measures what the generator contributes.

    Non-negativity: F's feature map (after a ReLU) and, for the built-in architectures, its penultimate layer are
    non-negative, while eq. 7's marginals are centred on zero, so many coordinates of f_ood are negative. They are
    left as eq. 7 gives them: the head sees exactly the equation's output, so the ablation changes nothing but the
    generator (clipping at zero would add a one-layer "decoder" of our own), and the feature-space synthesis
    methods (VOS, NPOS) also sample freely in feature space. Mapping a marginal back among images, and so among
    the features F gives images, is what G does in the latent variants and what this row goes without.

    Returned in the dtype of the ID features (float16 for the feature map, as F's features of synthesised images
    are), so that the head is given both classes at the same precision."""
    features = np.asarray(sources.id_features[:])
    labels = np.asarray(sources.labels).astype(np.int64)
    means, _ = class_means(features, labels, int(labels.max()) + 1)
    mixed, _, _ = synthesize_latents(
        features, labels, means, method="dmr_mlm", k=config.k, num_samples=config.num_samples,
        lambda_dist=config.lambda_dist, lambda_min=config.lambda_min, lambda_max=config.lambda_max, seed=config.seed,
        batch_size=FEATURE_MIX_ROWS)
    return SynthesisedFeatures(mixed.astype(features.dtype))


@dataclass(frozen=True)
class Variant:
    title: str                                                      # its row in the report
    synthesise: Callable[[SynthesisSources, VariantConfig], Synthesised]
    paper_table1_row: str | None = None                             # the paper's row for it, where it has one
    paper_table3_row: str | None = None
    edits_training_images: bool = False   # each synthesised image is one distinct ID training image, edited
    reads_class_activation_maps: bool = False  # F's CAM from the feature map (the head's layer must allow it)


VARIANTS: dict[str, Variant] = {
    "mlm": Variant("MLM (eq. 4)", partial(latent_mixing, method="mlm"), paper_table3_row="MLM"),
    "dmr": Variant("DMR-single (eq. 6)", partial(latent_mixing, method="dmr", k=1), paper_table3_row="DMR-single"),
    "mim": Variant("MIM", mim, paper_table1_row="MIM"),
    "kirby": Variant("KIRBY", kirby, paper_table1_row="KIRBY", edits_training_images=True,
                     reads_class_activation_maps=True),
    "dmr_kirby": Variant("DMR + KIRBY", dmr_kirby, edits_training_images=True, reads_class_activation_maps=True),
    "feature_dmr": Variant("DMR in F's feature space (eq. 7, no generator)", feature_dmr),
    "saliency_shuffle": Variant("ASCOOD (salient pixels shuffled)", saliency_shuffle, edits_training_images=True),
}
