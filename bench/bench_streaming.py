"""Benchmark streamed reads and writes: peak RSS and seconds of the features and latents stages' work on one stored
image set, read whole (as the stages did before they streamed) and a batch at a time (as they do now).

One stored set of ``--images`` random uint8 images at ``--size`` px, written as the data stage writes a set
(checksummed zarr chunks of at most 32 MiB). Each variant runs in its own process, so that its peak RSS
(``ru_maxrss``) is its own; the variants alternate over ``--repeats`` rounds and the best round is kept:

- features, whole: the set read into memory, ``extract_features`` of every image, the arrays written at once;
- features, streamed: ``feature_batches`` over the stored set, each chunk written when complete (stage features);
- latents, whole: ``draw_latents`` (E(x) and x − G(E(x))) of the set in memory, written at once;
- latents, streamed: ``latent_blocks`` over the stored set, written chunk by chunk (stage latents).

The nets are freshly initialised ones of the default shapes at the size (resnet20 with its feature map pooled to
at most 8 cells a side, style_vae); speed and memory do not depend on the weights. Writes metrics/bench_streaming.json:

    python bench/bench_streaming.py [--images 8000] [--size 96] [--repeats 2] 2>/dev/null
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_score import machine_facts  # noqa: E402 -- after the path

from dmr_core.data.artifacts import open_zarr, save_zarr, save_zarr_rows, save_zarr_stream  # noqa: E402
from dmr_core.nets.classifier import build_classifier  # noqa: E402
from dmr_core.nets.features import extract_features, feature_batches  # noqa: E402
from dmr_core.nets.generator import build_generator  # noqa: E402
from dmr_core.synthesis.latent_routes import draw_latents, latent_blocks  # noqa: E402

VARIANTS = ("features_whole", "features_streamed", "latents_whole", "latents_streamed")
FEATURES_BATCH, LATENTS_BATCH = 500, 1000  # features.batch_size and latents.batch_size of params.yaml
ROWS_PER_CHUNK = {"features": 2048, "latents": 4096}  # the stages' chunking


def run_variant(variant: str, stored: Path, out: Path) -> dict:
    """Run one variant on the stored set; its seconds (the process's own peak RSS is read by the caller)."""
    group = open_zarr(stored, "the benchmark set")
    images, labels = group["images"], np.asarray(group["labels"][:])
    size, n = images.shape[1], len(images)
    torch.manual_seed(0)
    start = time.perf_counter()
    if variant.startswith("features"):
        model = build_classifier("resnet20").set_max_grid(8).eval()
        if variant == "features_whole":
            found = extract_features(model, np.asarray(images[:]), FEATURES_BATCH)
            save_zarr_rows(out, found, range(n), n, rows_per_chunk=ROWS_PER_CHUNK["features"])
        else:
            save_zarr_stream(out, feature_batches(model, images, FEATURES_BATCH), range(n), n,
                             rows_per_chunk=ROWS_PER_CHUNK["features"])
    else:
        model = build_generator("style_vae", latent_dim=128, base_channels=32, image_size=size).eval()
        if variant == "latents_whole":
            drawn = draw_latents(model, "encoded", np.asarray(images[:]), labels, 10, batch_size=LATENTS_BATCH)
            save_zarr_rows(out, {"latents": drawn.latents, "labels": drawn.labels.astype("int16"),
                                 "residuals": drawn.residuals}, range(n), n, rows_per_chunk=ROWS_PER_CHUNK["latents"])
        else:
            blocks = latent_blocks(model, "encoded", images, labels, 10, batch_size=LATENTS_BATCH)
            save_zarr_stream(out, blocks, range(n), n, rows_per_chunk=ROWS_PER_CHUNK["latents"])
    return {"seconds": round(time.perf_counter() - start, 2)}


def measure(variant: str, stored: Path, folder: Path) -> dict:
    """``run_variant`` in a fresh process: its seconds and peak RSS."""
    out = folder / f"{variant}.zarr"
    code = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]); import bench_streaming as b; "
            "r = b.run_variant(sys.argv[2], b.Path(sys.argv[3]), b.Path(sys.argv[4])); "
            "r['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), variant, str(stored), str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_streaming.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
        save_zarr(folder / "set.zarr", {"images": images, "labels": np.arange(args.images) % 10})
        set_mb = round(images.nbytes / 2**20)
        del images
        results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                results[variant].append(measure(variant, folder / "set.zarr", folder))
                print(variant, results[variant][-1], flush=True)
    best = {variant: min(rounds, key=lambda r: r["seconds"])
            | {"peak_rss_mb_max": max(r["peak_rss_mb"] for r in rounds)} for variant, rounds in results.items()}
    report = {"images": args.images, "image_size": args.size, "set_mb": set_mb, "repeats": args.repeats,
              "best_round": best, "machine": machine_facts(load_before),
              "command": f"python bench/bench_streaming.py --images {args.images} --size {args.size} "
                         f"--repeats {args.repeats}"}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
