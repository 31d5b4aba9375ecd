"""Stage latents: the ID latents DMR mixes — w = E(x) and the residual x − G(E(x)) of every ID training image
(latents.route: encoded), or w = M(z, c) sampled per class from a class-conditional generator (sampled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import save_zarr
from dmr_core.nets.generator import load_generator
from dmr_core.params import Params
from dmr_core.synthesis.latent_routes import draw_latents

from ._common import read_image_set, run


def main(params: Params, train: Path, generator: Path, out: Path) -> None:
    p = params.latents
    images, labels, attrs = read_image_set(train)
    drawn = draw_latents(load_generator(generator), p.route, images, labels, len(attrs["class_names"]),
                         batch_size=p.batch_size, per_class=p.samples_per_class, seed=p.seed)
    arrays = {"latents": drawn.latents, "labels": drawn.labels.astype("int16")}
    if drawn.residuals is not None:
        arrays["residuals"] = drawn.residuals
    save_zarr(out, arrays, attrs={"class_names": attrs["class_names"], "route": p.route})
    if drawn.residuals is None:
        print(f"latents: {drawn.latents.shape} sampled from M(z, c)")
    else:
        rms = float(np.sqrt(np.mean(drawn.residuals.astype(np.float32) ** 2)))
        print(f"latents: {drawn.latents.shape} encoded; reconstruction residual RMS {rms:.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
