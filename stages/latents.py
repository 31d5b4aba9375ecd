"""Stage latents: w = E(x) for every ID training image → data/latents.zarr."""

from __future__ import annotations

from dmr_core.artifacts import save_zarr
from dmr_core.generator import encode_images, load_generator
from dmr_core.params import Params

from ._common import GENERATOR, LATENTS, id_split_path, read_image_set, run


def main(params: Params) -> None:
    images, labels, attrs = read_image_set(id_split_path("train"))
    latents = encode_images(load_generator(GENERATOR), images, batch_size=params.latents.batch_size)
    save_zarr(LATENTS, {"latents": latents, "labels": labels.astype("int16")},
              attrs={"class_names": attrs["class_names"]})
    print(f"latents: {latents.shape}")


if __name__ == "__main__":
    run(main, "latents")
