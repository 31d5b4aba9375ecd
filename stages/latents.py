"""Stage latents: w = E(x) and the residual x − G(E(x)) of every ID training image → data/latents.zarr."""

from __future__ import annotations

import numpy as np

from dmr_core.artifacts import save_zarr
from dmr_core.generator import decode_to_images, encode_images, load_generator
from dmr_core.params import Params
from dmr_core.synth import reconstruction_residuals

from ._common import GENERATOR, LATENTS, id_split_path, read_image_set, run


def main(params: Params) -> None:
    images, labels, attrs = read_image_set(id_split_path("train"))
    generator = load_generator(GENERATOR)
    latents = encode_images(generator, images, batch_size=params.latents.batch_size)
    residuals = reconstruction_residuals(images, decode_to_images(generator, latents, params.latents.batch_size))
    save_zarr(LATENTS, {"latents": latents, "labels": labels.astype("int16"), "residuals": residuals},
              attrs={"class_names": attrs["class_names"]})
    print(f"latents: {latents.shape}; reconstruction residual RMS {float(np.sqrt(np.mean(residuals.astype(np.float32) ** 2))):.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
