"""Stage latents: w = E(x) and the residual x − G(E(x)) of every ID training image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import save_zarr
from dmr_core.nets.generator import load_generator
from dmr_core.params import Params
from dmr_core.synthesis.detail import encode_with_residuals

from ._common import read_image_set, run


def main(params: Params, train: Path, generator: Path, out: Path) -> None:
    images, labels, attrs = read_image_set(train)
    latents, residuals = encode_with_residuals(load_generator(generator), images, params.latents.batch_size)
    save_zarr(out, {"latents": latents, "labels": labels.astype("int16"), "residuals": residuals},
              attrs={"class_names": attrs["class_names"]})
    rms = float(np.sqrt(np.mean(residuals.astype(np.float32) ** 2)))
    print(f"latents: {latents.shape}; reconstruction residual RMS {rms:.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
