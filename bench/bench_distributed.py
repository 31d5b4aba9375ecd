"""Benchmark data parallelism: 1 vs N processes (gloo on the CPU) for one training stage (the rejection head)
and two inference stages (the features; ood_synth's decoding), on a fixed small random input, timed inside rank 0 between barriers
(process start and imports excluded; they cost a few seconds per run under torchrun).

Each rank uses cores // N intra-op threads (``dmr_core.distributed.threads_per_rank``), as under ``DMR_NPROC``,
so that N processes do not oversubscribe the CPU. Prints the wall times side by side and writes them as JSON
(default metrics/bench_distributed.json).

    python bench/bench_distributed.py              # 1 vs 2 processes
    python bench/bench_distributed.py --nproc 4 --out bench_distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmr_core import distributed  # noqa: E402
from dmr_core.data.artifacts import save_zarr_rows, shared_output, write_zarr_rows  # noqa: E402
from dmr_core.nets.classifier import build_classifier  # noqa: E402
from dmr_core.nets.features import extract_feature_rows  # noqa: E402
from dmr_core.nets.generator import StyleConvVAE, decode_to_images  # noqa: E402
from dmr_core.synthesis.dmr import SynthConfig, synthesize_ood_images  # noqa: E402
from dmr_core.training.head import HeadConfig, train_rejection_head  # noqa: E402

# the input: 8192 ID + 8192 OOD penultimate-sized features for the head (2 epochs, batch 128, hidden 512);
# 4096 random images through resnet20 for the features, in chunks of 2048 rows and batches of 500 (the stage's)
HEAD_ROWS, HEAD_DIM = 8192, 640
HEAD = HeadConfig(hidden=512, epochs=2, batch_size=128, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                  schedule="cosine", seed=0)
FEATURE_IMAGES, ROWS_PER_CHUNK, BATCH = 4096, 2048, 500
# 8192 images decoded by the default generator (style_vae, 128-d latent) from 5000 random ID latents, as stage
# ood_synth does (its chunks of 4096 rows and batches of 1000; no detail)
SYNTH = SynthConfig(method="dmr_mlm", k=2, lambda_dist="loguniform", lambda_min=1.0, lambda_max=40.0, normalise=False,
                    detail="none", detail_fraction=0.0, num_samples=8192, batch_size=1000, seed=0)
SYNTH_ROWS_PER_CHUNK = 4096
CPU = torch.device("cpu")


def head_training(scratch: Path) -> None:
    rng = np.random.default_rng(0)
    id_features = rng.normal(size=(HEAD_ROWS, HEAD_DIM)).astype(np.float16)
    ood_features = (rng.normal(size=(HEAD_ROWS, HEAD_DIM)) + 0.5).astype(np.float16)
    train_rejection_head(id_features, ood_features, HEAD, device=CPU)


def features(scratch: Path) -> None:
    import zarr
    images = np.random.default_rng(1).integers(0, 256, (FEATURE_IMAGES, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    with shared_output(scratch / "features.zarr") as tmp:
        if distributed.is_main():
            zarr.open_group(str(tmp), mode="w")
        rows = distributed.chunk_shard(len(images), ROWS_PER_CHUNK)
        arrays = extract_feature_rows(model, images, rows, BATCH)
        write_zarr_rows(tmp, "id_train", arrays, rows, len(images), ROWS_PER_CHUNK)


def ood_synth(scratch: Path) -> None:
    rng = np.random.default_rng(2)
    latents, labels = rng.normal(size=(5000, 128)).astype(np.float32), np.arange(5000) % 10
    means = np.stack([latents[labels == c].mean(0) for c in range(10)])
    torch.manual_seed(0)
    generator = StyleConvVAE(latent_dim=128, base_channels=32).eval()
    rows = distributed.chunk_shard(SYNTH.num_samples, SYNTH_ROWS_PER_CHUNK)
    synthesised = synthesize_ood_images(latents, labels, means,
                                        lambda w: decode_to_images(generator, w, SYNTH.batch_size), SYNTH, rows=rows)
    save_zarr_rows(scratch / "ood_synth.zarr", {"images": synthesised.images}, rows, SYNTH.num_samples,
                   rows_per_chunk=SYNTH_ROWS_PER_CHUNK)


CASES = {"rejection_head (train)": head_training, "features (inference)": features,
         "ood_synth (inference)": ood_synth}


def _rank(rank: int, world: int, port: int, case: str, scratch: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DMR_DEVICE="cpu")
    with distributed.process_group():
        distributed.barrier()
        start = time.perf_counter()
        CASES[case](Path(scratch))
        distributed.barrier()
        seconds = time.perf_counter() - start
    if rank == 0:
        Path(result).write_text(str(seconds))


def timed(case: str, world: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "seconds"
        if world == 1:
            torch.set_num_threads(distributed.threads_per_rank(1))
            start = time.perf_counter()
            CASES[case](Path(scratch))
            return time.perf_counter() - start
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(world, port, case, scratch, str(result)), nprocs=world, join=True)
        return float(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="the process count to compare with 1")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_distributed.json")
    args = parser.parse_args()
    rows = {}
    print(f"{'stage':<26}{'1 process':>12}{f'{args.nproc} processes':>14}{'speed-up':>10}")
    for case in CASES:
        one, many = timed(case, 1), timed(case, args.nproc)
        rows[case] = {"seconds_1": round(one, 2), f"seconds_{args.nproc}": round(many, 2),
                      "speedup": round(one / many, 2)}
        print(f"{case:<26}{one:>11.2f}s{many:>13.2f}s{one / many:>9.2f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                                    "torch": torch.__version__, "nproc": args.nproc, "stages": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
