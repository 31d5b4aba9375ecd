"""Stage synth_baseline@<variant>: an OOD-synthesis method of the variant table through the same rejection-head
training as DMR, so that only the synthesised set differs. Writes the fields of metrics/eval.json and a picture of the
set (a sample grid of images; for a set synthesised in feature space, its feature histograms)."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, write_json
from dmr_core.data.encoding import encode_like, resolve_encoding, stored_encoding
from dmr_core.detectors.dmr import evaluate_head
from dmr_core.distributed import split_over_ranks
from dmr_core.errors import ParamsError
from dmr_core.nets.classifier import load_classifier
from dmr_core.nets.generator import decode_to_images, load_generator
from dmr_core.params import Params
from dmr_core.synthesis.baseline import save_synthesised_plot, synthesised_count, train_head_on_synthesised
from dmr_core.synthesis.variants import VARIANTS, SynthesisSources, VariantConfig, variant_sample_count
from dmr_core.training.head import HeadConfig

from dmr_core.data.layout import ood_features, open_features
from dmr_core.runtime.stage import run


def main(params: Params, variant: str, train: Path, latents: Path, class_means: Path, generator: Path,
         classifier: Path, features: Path, metrics: Path, plot: Path) -> None:
    if variant not in VARIANTS:
        raise ParamsError(f"unknown synthesis variant {variant!r}; choose from {', '.join(VARIANTS)}")
    h = params.head
    model = load_classifier(classifier, params.features.layer, params.features.max_grid)
    group = open_features(features)
    id_features = np.asarray(group["id_train"][h.feature][:])
    encoded = open_zarr(latents, "the latents (stage latents)")
    sources = SynthesisSources(
        labels=np.asarray(open_zarr(train, "the datasets (stage data)")["labels"][:]).astype(np.int64),
        images=open_zarr(train, "the datasets (stage data)")["images"], latents=encoded["latents"],
        latent_labels=np.asarray(encoded["labels"][:]).astype(np.int64),
        class_means=open_zarr(class_means, "the class means (stage class_means)")["means"],
        # under torchrun each rank decodes its share of the batches and gets every image back
        decode=split_over_ranks(partial(decode_to_images, load_generator(generator), batch_size=params.synth.batch_size),
                                params.synth.batch_size),
        feature_maps=group["id_train"]["feature_map"], logits=group["id_train"]["logits"],
        class_weights=model.classifier_head().weight.detach(), id_features=id_features, classifier=model)
    count = variant_sample_count(variant, params.synth_baselines.num_samples, params.synth.num_samples,
                                 len(sources.labels))
    config = dataclasses.replace(params.synth_baselines.to(VariantConfig), num_samples=count)
    synthesised = VARIANTS[variant].synthesise(sources, config)
    if isinstance(synthesised, np.ndarray):  # images pass through the ID files' encoding, as DMR's (synth.encoding)
        id_attrs = open_zarr(train, "the datasets (stage data)").attrs
        synthesised = encode_like(synthesised, resolve_encoding(params.synth.encoding, stored_encoding(id_attrs)))
    trained = train_head_on_synthesised(model, id_features, synthesised, h.feature, h.to(HeadConfig),
                                        params.features.batch_size)
    result = evaluate_head(trained.head, group["id_test"][h.feature], ood_features(group, h.feature))
    write_json(metrics, {
        "method": variant, "feature": h.feature, **synthesised_count(synthesised),
        "train_loss_per_epoch": [round(v, 5) for v in trained.history.loss], **result.metrics})
    print(f"synth baseline {variant}: mean AUROC {result.metrics['mean']['AUROC']:.2f}")
    save_synthesised_plot(synthesised, id_features, h.feature, plot, variant)


if __name__ == "__main__":
    run(main, "synth_baseline")
