"""Stage synth_baseline@<variant>: another OOD-synthesis method through the same rejection-head training.

Variants: mlm (eq. 4), dmr (eq. 6), mim (pixel mixup), kirby (CAM erase + inpaint), dmr_kirby (union).
Writes metrics/synth_baselines/<variant>.json (the fields of metrics/eval.json) and a sample grid.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from dmr_core.artifacts import open_zarr, write_json
from dmr_core.classifier import load_classifier
from dmr_core.evaluation import evaluate_scores
from dmr_core.features import extract_features
from dmr_core.generator import decode_to_images, load_generator
from dmr_core.kirby import class_activation_maps, erase_and_inpaint
from dmr_core.params import Params
from dmr_core.plotting import save_image_grid
from dmr_core.posthoc import feature_maps_of
from dmr_core.rejection import DMRDetector, train_rejection_head
from dmr_core.synth import pixel_mixup, sample_sources, synthesize_latents

from ._common import (
    CLASS_MEANS,
    CLASSIFIER,
    GENERATOR,
    LATENTS,
    METRICS,
    PLOTS,
    feature_ood_sets,
    id_split_path,
    read_features,
    read_image_set,
    run,
)


def latent_variant(params: Params, method: str) -> np.ndarray:
    p = params.synth_baselines
    group = open_zarr(LATENTS, "the latents (stage latents)")
    means = np.asarray(open_zarr(CLASS_MEANS, "the class means (stage class_means)")["means"][:])
    mixed, _, _ = synthesize_latents(
        np.asarray(group["latents"][:]), np.asarray(group["labels"][:]), means, method=method,
        k=1 if method == "dmr" else p.k, num_samples=p.num_samples, lambda_dist=p.lambda_dist,
        lambda_min=p.lambda_min, lambda_max=p.lambda_max, seed=p.seed)
    return decode_to_images(load_generator(GENERATOR), mixed, batch_size=params.synth.batch_size)


def kirby_variant(params: Params, model) -> np.ndarray:
    p = params.synth_baselines
    images, _, _ = read_image_set(id_split_path("train"))
    rng = np.random.default_rng(p.seed)
    chosen = np.sort(rng.permutation(len(images))[: p.num_samples])
    fmaps = feature_maps_of(read_features("id_train", "feature_map")[chosen], model.feature_channels)
    predicted = torch.from_numpy(read_features("id_train", "logits")[chosen]).argmax(1)
    cams = class_activation_maps(fmaps, model.classifier_head().weight.detach(), predicted).numpy()
    return erase_and_inpaint(images[chosen], cams, p.kirby_threshold)


def synthesise(params: Params, variant: str, model) -> np.ndarray:
    p = params.synth_baselines
    if variant in ("mlm", "dmr"):
        return latent_variant(params, variant)
    if variant == "mim":
        images, labels, _ = read_image_set(id_split_path("train"))
        return pixel_mixup(images, sample_sources(labels, p.k, p.num_samples, np.random.default_rng(p.seed)))
    if variant == "kirby":
        return kirby_variant(params, model)
    if variant == "dmr_kirby":
        return np.concatenate([latent_variant(params, "dmr_mlm"), kirby_variant(params, model)])
    raise ValueError(f"unknown synthesis baseline {variant!r}")


def main(params: Params, variant: str) -> None:
    h = params.head
    model = load_classifier(CLASSIFIER)
    images = synthesise(params, variant, model)
    synth_features = extract_features(model, images, params.features.batch_size, desc=f"{variant} features")[h.feature]
    head, history = train_rejection_head(
        read_features("id_train", h.feature), synth_features, hidden=h.hidden, epochs=h.epochs,
        batch_size=h.batch_size, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov, weight_decay=h.weight_decay,
        schedule=h.schedule, seed=h.seed, input_dropout=h.input_dropout)
    detector = DMRDetector(head)

    def scores(key: str) -> np.ndarray:
        return detector.predict_features(torch.from_numpy(read_features(key, h.feature))).numpy()

    results = evaluate_scores(scores("id_test"), {name: scores(f"ood/{name}") for name in feature_ood_sets()})
    write_json(METRICS / "synth_baselines" / f"{variant}.json", {
        "method": variant, "feature": h.feature, "synthesised_images": int(len(images)),
        "train_loss_per_epoch": [round(v, 5) for v in history], **results})
    print(f"synth baseline {variant}: mean AUROC {results['mean']['AUROC']:.2f}")
    show = np.linspace(0, len(images) - 1, min(32, len(images))).astype(int)
    save_image_grid([(f"{variant}: synthesised OOD training images", images[show])],
                    PLOTS / "synth_baselines" / f"{variant}.png", ncols=16)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.synth_baseline <mlm|dmr|mim|kirby|dmr_kirby>")
    run(lambda params: main(params, sys.argv[1]), f"synth_baseline@{sys.argv[1]}")
