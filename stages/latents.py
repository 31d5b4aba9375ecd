"""Stage latents: the ID latents DMR mixes — w = E(x) and the residual x − G(E(x)) of every ID training image
(latents.route: encoded), or w = M(z, c) sampled per class from a class-conditional generator (sampled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import save_zarr_stream
from dmr_core.distributed import chunk_shard, sum_over_ranks
from dmr_core.nets.generator import load_generator
from dmr_core.params import Params
from dmr_core.synthesis.latent_routes import LatentTally, latent_blocks, num_latents

from dmr_core.data.layout import open_image_set
from dmr_core.runtime.stage import run

ROWS_PER_CHUNK = 4096


def main(params: Params, train: Path, generator: Path, out: Path) -> None:
    p = params.latents
    images, labels, attrs = open_image_set(train)
    num_classes = len(attrs["class_names"])
    n = num_latents(p.route, labels, num_classes, p.samples_per_class)
    # under torchrun each rank encodes (or maps) and writes its own whole chunks (dmr_core.distributed)
    rows = chunk_shard(n, ROWS_PER_CHUNK)
    blocks = latent_blocks(load_generator(generator), p.route, images, labels, num_classes,
                           batch_size=p.batch_size, per_class=p.samples_per_class, seed=p.seed, rows=rows)
    tally = LatentTally()
    stored = ((start, {**block, "labels": block["labels"].astype("int16")})
              for start, block in map(tally.add, blocks))
    save_zarr_stream(out, stored, rows, n, {"class_names": attrs["class_names"], "route": p.route}, ROWS_PER_CHUNK)
    if p.route == "sampled":
        print(f"latents: {(n, *tally.latent_shape)} sampled from M(z, c)")
        return
    squares, count = sum_over_ranks(tally.squares, tally.count)
    rms = np.sqrt(squares / max(count, 1))
    print(f"latents: {(n, *tally.latent_shape)} encoded; reconstruction residual RMS {rms:.2f} / 255")


if __name__ == "__main__":
    run(main, "latents")
