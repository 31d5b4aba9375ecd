"""Stage class_means: μ_y, the mean latent (and mean residual x − G(E(x))) of each ID class, with its latent count.
For sampled latents w = M(z, c) this is M's per-class average, E_z[M(z, c)], estimated from the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, save_zarr
from dmr_core.params import Params
from dmr_core.synthesis.latent_mixing import class_means

from dmr_core.runtime.stage import run


def main(params: Params, latents: Path, out: Path) -> None:
    group = open_zarr(latents, "the latents (stage latents)")
    class_names = group.attrs["class_names"]
    labels = np.asarray(group["labels"][:])
    means, counts = class_means(np.asarray(group["latents"][:]), labels, len(class_names))
    arrays = {"means": means, "counts": counts.astype("int64")}
    if "residuals" in group:  # encoded latents only
        arrays["residual_means"], _ = class_means(np.asarray(group["residuals"][:]), labels, len(class_names))
    save_zarr(out, arrays, attrs={"class_names": class_names})
    print("class means: " + ", ".join(f"{n} ({c})" for n, c in zip(class_names, counts)))


if __name__ == "__main__":
    run(main, "class_means")
