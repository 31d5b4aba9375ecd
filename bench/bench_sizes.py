"""Benchmark scoring at each image size: images/s of `dmr score`'s internals at data.image_size 32, 64, 128 and 224,
for the default classifier (resnet20, its feature map pooled to at most features.max_grid = 8 cells a side) and, at
224 px, for a torchvision ResNet-18 seeing the images at 224 px; with the process's peak RSS.

Freshly initialised nets of the run's shapes at each size (speed does not depend on the weights): the classifier
built for the size, a rejection head of 512 hidden units on its pooled feature map. Measured side by side in one
process, in ``--repeats`` rounds over every variant, best round per variant:

- arrays: ``TrainedDetector.score`` on uint8 S×S arrays at batch 500 (extract_features + the head);
- files: what `dmr score FOLDER --out rows.csv` runs (``read_inputs`` + ``score_stream``) on PNG files of that size:
  decoding, the resize rule (a no-op at the run's size), batching, scoring, writing the rows.

Writes metrics/bench_sizes.json:

    python bench/bench_sizes.py [--images 1000] [--repeats 3] [--out metrics/bench_sizes.json] 2>/dev/null
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_score import best_rates, machine_facts  # noqa: E402 -- after the path

from dmr_core.nets.classifier import build_classifier, set_input_size  # noqa: E402
from dmr_core.nets.rejection_head import RejectionHead  # noqa: E402
from dmr_core.serving.detector import TrainedDetector  # noqa: E402
from dmr_core.serving.inputs import read_inputs  # noqa: E402
from dmr_core.serving.scoring import score_stream, sink_for  # noqa: E402

SIZES = (32, 64, 128, 224)
MAX_GRID = 8  # features.max_grid's default
BATCH = 500


def detector_at(arch: str, size: int) -> TrainedDetector:
    """The run's detector shapes at ``size`` px: ``arch`` for the size, a 512-unit head on its pooled feature map."""
    torch.manual_seed(0)
    classifier = set_input_size(build_classifier(arch).eval(), size).set_max_grid(MAX_GRID)
    with torch.inference_mode():
        width = classifier.representations(torch.zeros(1, 3, size, size))["feature_map"][0].numel()
    return TrainedDetector(classifier, RejectionHead(width, 512).eval(), "feature_map", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images per variant (fewer at 224 px: a quarter)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_sizes.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    cases = [("resnet20", size) for size in SIZES] + [("torchvision:resnet18", 224)]
    load_before = round(os.getloadavg()[0], 2)
    head_inputs = {}
    with tempfile.TemporaryDirectory(prefix="dmr-bench-sizes-") as tmp:
        variants = {}
        for arch, size in cases:
            n = args.images if size < 224 else max(1, args.images // 4)
            images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            detector = detector_at(arch, size)
            head_inputs[f"{arch}@{size}"] = int(detector.head.config["in_features"])
            folder = Path(tmp, f"{arch.replace(':', '_')}_{size}")
            folder.mkdir()
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{i:05d}.png")

            def arrays(detector=detector, images=images) -> int:
                detector.batch_size = BATCH
                for start in range(0, len(images), BATCH):
                    detector.score(images[start:start + BATCH])
                return len(images)

            def files(detector=detector, folder=folder, n=n) -> int:
                with sink_for(Path(tmp, "rows.csv"), detector.describe()) as sink:
                    score_stream(detector, read_inputs([folder], detector.image_size), sink, BATCH, progress=False)
                return n

            variants[f"{arch}@{size}px_arrays"] = arrays
            variants[f"{arch}@{size}px_png_files"] = files
        results = best_rates(variants, args.repeats)
    machine = machine_facts(load_before)
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    payload = {"what": f"images/s scoring S×S uint8 images (class, confidence, DMR score, decision) at batch {BATCH}, "
                       f"best of {args.repeats}; freshly initialised nets of the run's shapes",
               "images": {"below_224px": args.images, "at_224px": max(1, args.images // 4)},
               "head_in_features": head_inputs, "max_grid": MAX_GRID, "machine": machine,
               "images_per_s": results, "peak_rss_mb_whole_process": peak}
    for name, rate in results.items():
        print(f"{name:>40}: {rate:8.1f} images/s")
    print(json.dumps({"head_in_features": head_inputs, "peak_rss_mb": peak, **machine}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
