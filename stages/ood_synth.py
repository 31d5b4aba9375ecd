"""Stage ood_synth: synthesised OOD training images from ID latents (eq. 4 / 6 / 7), passed through the ID training
files' own encoding (synth.encoding) as every ID image is."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import open_zarr, save_zarr_stream
from dmr_core.data.encoding import describe_encoding, encode_like, resolve_encoding, stored_encoding
from dmr_core.distributed import chunk_shard, is_main
from dmr_core.nets.generator import decode_to_images, load_generator
from dmr_core.params import Params
from dmr_core.plotting import lambda_band_rows, save_image_grid
from dmr_core.data.streams import block_rows, row_bytes
from dmr_core.synthesis.dmr import SynthConfig, synthesised_blocks

from dmr_core.runtime.stage import run

ROWS_PER_CHUNK = 4096


def main(params: Params, id_train: Path, latents: Path, class_means: Path, generator: Path, out: Path,
         plot: Path) -> None:
    p = params.synth
    id_images = open_zarr(id_train, "the datasets (stage data)")
    encoding = resolve_encoding(p.encoding, stored_encoding(id_images.attrs))
    encoded = open_zarr(latents, "the latents (stage latents)")
    means = open_zarr(class_means, "the class means (stage class_means)")
    # under torchrun each rank decodes and writes its own whole chunks; the draws are the whole set's on every rank
    rows = chunk_shard(p.num_samples, ROWS_PER_CHUNK)
    blocks = synthesised_blocks(
        np.asarray(encoded["latents"][:]), np.asarray(encoded["labels"][:]), np.asarray(means["means"][:]),
        partial(decode_to_images, load_generator(generator), batch_size=p.batch_size), p.to(SynthConfig),
        # the sampled route has no residuals; validation keeps synth.detail at none there
        residuals=encoded["residuals"] if "residuals" in encoded else None,
        residual_means=means["residual_means"] if "residual_means" in means else None, rows=rows,
        block=block_rows(p.batch_size, row_bytes(id_images["images"])))
    stored = ((start, {"images": encode_like(part.images, encoding), "lambdas": part.lambdas,
                       "source_indices": part.sources.astype(np.int32),
                       "source_labels": part.source_labels.astype(np.int16)}) for start, part in blocks)
    save_zarr_stream(out, stored, rows, p.num_samples, {
        "method": p.method, "k": p.k, "lambda_dist": p.lambda_dist, "detail": p.detail,
        "detail_fraction": p.detail_fraction, "encoding": describe_encoding(encoding)}, ROWS_PER_CHUNK)
    if not is_main():
        return
    written = open_zarr(out, "the synthesised OOD set (stage ood_synth)")
    images, lambdas = written["images"], np.asarray(written["lambdas"][:])  # the picture reads only its images
    print(f"ood_synth: {len(lambdas)} images, method {p.method}, k {p.k}, "
          f"lambda {lambdas.min():.2f}..{lambdas.max():.2f}, encoded as the ID files: {describe_encoding(encoding)}")
    save_image_grid(lambda_band_rows(images, lambdas), plot, ncols=16,
                    title=f"synthesised OOD: {p.method}, k={p.k}, λ {p.lambda_dist} [{p.lambda_min}, {p.lambda_max}], "
                          f"detail {p.detail}")


if __name__ == "__main__":
    run(main, "ood_synth")
