"""Stage latents: the ID latents DMR mixes — w = E(x) and the residual x − G(E(x)) of every ID training image
(latents.route: encoded), or w = M(z, c) sampled per class from a class-conditional generator (sampled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import save_zarr_rows
from dmr_core.distributed import chunk_shard, sum_over_ranks
from dmr_core.nets.generator import load_generator
from dmr_core.params import Params
from dmr_core.synthesis.latent_routes import draw_latents, num_latents

from dmr_core.data.layout import read_image_set
from dmr_core.runtime.stage import run

ROWS_PER_CHUNK = 4096


def main(params: Params, train: Path, generator: Path, out: Path) -> None:
    p = params.latents
    images, labels, attrs = read_image_set(train)
    num_classes = len(attrs["class_names"])
    n = num_latents(p.route, labels, num_classes, p.samples_per_class)
    # under torchrun each rank encodes (or maps) and writes its own whole chunks (dmr_core.distributed)
    rows = chunk_shard(n, ROWS_PER_CHUNK)
    drawn = draw_latents(load_generator(generator), p.route, images, labels, num_classes,
                         batch_size=p.batch_size, per_class=p.samples_per_class, seed=p.seed, rows=rows)
    arrays = {"latents": drawn.latents, "labels": drawn.labels.astype("int16")}
    if drawn.residuals is not None:
        arrays["residuals"] = drawn.residuals
    save_zarr_rows(out, arrays, rows, n, {"class_names": attrs["class_names"], "route": p.route}, ROWS_PER_CHUNK)
    shape = (n, *drawn.latents.shape[1:])  # rank 0, the one that prints, has rows whenever there are any
    if drawn.residuals is None:
        print(f"latents: {shape} sampled from M(z, c)")
        return
    squared = drawn.residuals.astype(np.float32)
    squares, count = sum_over_ranks(float(np.square(squared, out=squared).sum(dtype=np.float64)), squared.size)
    print(f"latents: {shape} encoded; reconstruction residual RMS {np.sqrt(squares / count):.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
