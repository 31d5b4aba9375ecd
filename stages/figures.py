"""Stage figures: the paper's Figures 3 and 4 — synthesised images for k = 1…5 and for λ = 1…5 from fixed sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr
from dmr_core.nets.generator import decode_to_images, load_generator
from dmr_core.params import Params
from dmr_core.plotting import save_image_grid
from dmr_core.synthesis.figures import feasible_ks, fixed_sources, k_sweep, lambda_sweep

from dmr_core.data.layout import open_image_set
from dmr_core.data.streams import take_rows
from dmr_core.runtime.stage import run


def main(params: Params, train: Path, latents: Path, class_means: Path, generator: Path, plots: Path) -> None:
    p = params.figures
    encoded = open_zarr(latents, "the latents (stage latents)")
    latent_array, labels = np.asarray(encoded["latents"][:]), np.asarray(encoded["labels"][:])
    means = np.asarray(open_zarr(class_means, "the class means (stage class_means)")["means"][:])
    images, _, _ = open_image_set(train)
    model = load_generator(generator)

    def decode(batch: np.ndarray) -> np.ndarray:
        return decode_to_images(model, batch.astype(np.float32), batch_size=len(batch))

    classes = len(np.unique(labels))
    ks, fixed_k = feasible_ks(p.ks, classes), min(p.fixed_k, classes)
    sources = fixed_sources(labels, max(ks + [fixed_k]), p.columns, p.seed)
    # a sampled latent has no photograph behind it: show what G makes of it
    first = ([("first source (real)", take_rows(images, sources[:, 0]))]
             if encoded.attrs.get("route", "encoded") == "encoded"
             else [("first source G(M(z, c))", decode(latent_array[sources[:, 0]]))])
    rows = [(f"k = {k}", decode(mixed)) for k, mixed in zip(ks, k_sweep(latent_array, labels, means, ks,
                                                                        p.fixed_lambda, sources))]
    save_image_grid(first + rows, plots / "fig3_k.png", ncols=p.columns,
                    title=f"Figure 3: eq. 7 as k grows (λ = {p.fixed_lambda}; column j mixes its first k sources)")
    rows = [(f"λ = {lam:g}", decode(mixed)) for lam, mixed in zip(p.lambdas, lambda_sweep(
        latent_array, labels, means, p.lambdas, sources[:, :fixed_k]))]
    save_image_grid(first + rows, plots / "fig4_lambda.png", ncols=p.columns,
                    title=f"Figure 4: eq. 7 as λ grows (k = {fixed_k} sources per column)")
    print(f"figures: {len(ks)} k rows and {len(p.lambdas)} λ rows of {p.columns} images")


if __name__ == "__main__":
    run(main, "figures")
