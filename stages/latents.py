"""Stage latents: the ID latents DMR mixes — w = E(x) and the residual x − G(E(x)) of every ID training image
(latents.route: encoded), or w = M(z, c) sampled per class from a class-conditional generator (sampled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from dmr_core.data.artifacts import open_zarr, shared_output, write_zarr_rows
from dmr_core.distributed import chunk_shard, is_main
from dmr_core.nets.generator import load_generator
from dmr_core.params import Params
from dmr_core.synthesis.latent_routes import draw_latents, num_latents

from ._common import read_image_set, run

ROWS_PER_CHUNK = 4096


def main(params: Params, train: Path, generator: Path, out: Path) -> None:
    p = params.latents
    images, labels, attrs = read_image_set(train)
    num_classes = len(attrs["class_names"])
    n = num_latents(p.route, labels, num_classes, p.samples_per_class)
    # under torchrun each rank encodes (or maps) and writes its own whole chunks (dmr_core.distributed)
    rows = chunk_shard(n, ROWS_PER_CHUNK)
    with shared_output(out) as tmp:
        if is_main():
            zarr.open_group(str(tmp), mode="w")
        drawn = draw_latents(load_generator(generator), p.route, images, labels, num_classes,
                             batch_size=p.batch_size, per_class=p.samples_per_class, seed=p.seed, rows=rows)
        arrays = {"latents": drawn.latents, "labels": drawn.labels.astype("int16")}
        if drawn.residuals is not None:
            arrays["residuals"] = drawn.residuals
        write_zarr_rows(tmp, "", arrays, rows, n, ROWS_PER_CHUNK)
        if is_main():
            zarr.open_group(str(tmp), mode="r+").attrs.update({"class_names": attrs["class_names"], "route": p.route})
    if not is_main():
        return
    written = open_zarr(out, "the latents (stage latents)")
    if "residuals" not in written:
        print(f"latents: {written['latents'].shape} sampled from M(z, c)")
    else:
        rms = float(np.sqrt(np.mean(np.asarray(written["residuals"][:]).astype(np.float32) ** 2)))
        print(f"latents: {written['latents'].shape} encoded; reconstruction residual RMS {rms:.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
