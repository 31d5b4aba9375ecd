"""Stage ood_synth: synthesised OOD training images from ID latents (eq. 4 / 6 / 7) → data/ood_synth.zarr."""

from __future__ import annotations

import numpy as np

from dmr_core.artifacts import open_zarr, save_zarr
from dmr_core.generator import decode_to_images, load_generator
from dmr_core.params import Params
from dmr_core.plotting import save_image_grid
from dmr_core.synth import add_detail, mix_detail, mix_latents, synthesize_latents

from ._common import CLASS_MEANS, GENERATOR, LATENTS, OOD_SYNTH, PLOTS, run


def main(params: Params) -> None:
    p = params.synth
    latent_group = open_zarr(LATENTS, "the latents (stage latents)")
    mean_group = open_zarr(CLASS_MEANS, "the class means (stage class_means)")
    means = np.asarray(mean_group["means"][:])
    labels = np.asarray(latent_group["labels"][:])
    mixed, sources, lambdas = synthesize_latents(
        np.asarray(latent_group["latents"][:]), labels, means, method=p.method, k=p.k, num_samples=p.num_samples,
        lambda_dist=p.lambda_dist, lambda_min=p.lambda_min, lambda_max=p.lambda_max, seed=p.seed,
        normalise=p.normalise,
    )
    images = decode_to_images(load_generator(GENERATOR), mixed, batch_size=p.batch_size)
    if p.detail != "none":
        residuals = np.asarray(latent_group["residuals"][:])
        residual_means = np.asarray(mean_group["residual_means"][:])
        chosen = np.flatnonzero(np.random.default_rng([p.seed, 1]).random(len(images)) < p.detail_fraction)
        for start in range(0, len(chosen), p.batch_size):  # in batches: n × k residuals would not fit comfortably
            rows = chosen[start:start + p.batch_size]
            if p.detail == "residual":
                detail = mix_detail(residuals[sources[rows]])
            else:
                detail = mix_latents(residuals[sources[rows]].astype(np.float32),
                                     residual_means[labels[sources[rows]]], lambdas[rows], p.method)
            images[rows] = add_detail(images[rows], detail)
    save_zarr(OOD_SYNTH, {
        "images": images, "lambdas": lambdas, "source_indices": sources.astype(np.int32),
        "source_labels": labels[sources].astype(np.int16),
    }, attrs={"method": p.method, "k": p.k, "lambda_dist": p.lambda_dist, "detail": p.detail,
              "detail_fraction": p.detail_fraction})
    print(f"ood_synth: {len(images)} images, method {p.method}, k {p.k}, "
          f"lambda {lambdas.min():.2f}..{lambdas.max():.2f}")
    order = np.argsort(lambdas, kind="stable")
    rows = []
    for band, chunk in zip(("lowest", "middle", "highest"), np.array_split(order, 3)):
        pick = chunk[np.linspace(0, len(chunk) - 1, min(16, len(chunk))).astype(int)]
        rows.append((f"{band} λ ({lambdas[pick].min():.2f}–{lambdas[pick].max():.2f})", images[pick]))
    save_image_grid(rows, PLOTS / "ood_synth" / "samples.png", ncols=16,
                    title=f"synthesised OOD: {p.method}, k={p.k}, λ {p.lambda_dist} [{p.lambda_min}, {p.lambda_max}], "
                          f"detail {p.detail}")


if __name__ == "__main__":
    run(main, "ood_synth")
