"""Benchmark scoring new 32×32 images: images/s of `dmr score`'s internals and of the exported TorchScript file.

Uses the run's classifier and rejection head when `dvc repro` has trained them here, else freshly initialised nets
of the default shapes (ResNet-20, a head of 512 hidden units on the 64×8×8 feature map; speed does not depend on
the weights). Measured side by side in one process, in ``--repeats`` rounds over every variant, best round per variant (other load on the machine then
hits each variant alike):

- pipeline, decoded: ``TrainedDetector.score`` on uint8 arrays (extract_features + DMRDetector), per batch size;
- pipeline, from files: ``score_items`` on a folder of PNG files (decoding, the 32×32 rule, batching, scoring);
- exported: the ``dmr export`` file loaded with ``torch.jit.load``;
- exported, frozen + optimize_for_inference: a variant that is not exported (its scores differ from the
  pipeline's in the 4th digit), shown for what it would gain.

The combined score is left out (its KNN search costs extra per image). Writes metrics/bench_score.json. The
pipeline path's progress bars (extract_features') go to stderr:

    python bench/bench_score.py [--images 2000] [--repeats 5] [--out metrics/bench_score.json] 2>/dev/null
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.rejection_head import RejectionHead
from dmr_core.serving.detector import TrainedDetector
from dmr_core.serving.export import ExportedDetector, build_exported, export_detector
from dmr_core.serving.inputs import list_items
from dmr_core.serving.scoring import score_items


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_nets() -> tuple[TrainedDetector, str]:
    """The run's detector if trained here, else fresh nets of the default shapes."""
    os.chdir(ROOT)
    try:
        from dmr_core.cli import pipeline_commands
        from dmr_core.serving.run import run_artifacts

        return TrainedDetector.load(run_artifacts(pipeline_commands()), with_combined=False), "the run's trained nets"
    except Exception:  # noqa: BLE001 -- no run here (or no DVC): the speed does not depend on the weights
        torch.manual_seed(0)
        return (TrainedDetector(build_classifier("resnet20").eval(), RejectionHead(64 * 8 * 8, 512).eval(),
                                "feature_map", 0.0),
                "freshly initialised nets of the default shapes (resnet20, head hidden 512 on feature_map)")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_score.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    detector, nets = load_nets()
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    n = len(images)
    load_before = round(os.getloadavg()[0], 2)

    def pipeline(batch_size: int):
        def run() -> None:
            detector.batch_size = batch_size
            detector.score(images)
        return run

    with tempfile.TemporaryDirectory(prefix="dmr-bench-score-") as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        items = list_items([folder])
        model = Path(tmp, "model.pt")
        export_detector(model, detector.classifier, detector.head, detector.feature, detector.threshold)
        exported = ExportedDetector.load(model)

        def from_files() -> None:
            detector.batch_size = 250
            score_items(detector, items, 250, progress=False)

        def exported_run(batch_size: int):
            def run() -> None:
                exported.batch_size = batch_size
                exported.score(images)
            return run

        with torch.inference_mode():
            module = build_exported(detector.classifier, detector.head, detector.feature, detector.threshold)
            optimised = torch.jit.optimize_for_inference(torch.jit.freeze(module.eval(), preserved_attrs=["classes"]))
        x = torch.from_numpy(images)

        def optimised_run() -> None:
            with torch.inference_mode():
                for s in range(0, n, 250):
                    optimised(x[s:s + 250])

        variants = {**{f"pipeline_decoded_bs{b}": pipeline(b) for b in (128, 250, 500)},
                    "pipeline_from_png_files_bs250": from_files,
                    **{f"exported_bs{b}": exported_run(b) for b in (128, 250, 500)},
                    "exported_frozen_optimized_bs250_not_exported": optimised_run}
        # rounds over every variant, best per variant: the machine's other load then hits each variant alike
        seconds = {name: [] for name in variants}
        for name, fn in variants.items():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in variants.items():
                seconds[name].append(_timed(fn))
        results = {name: round(n / min(times), 1) for name, times in seconds.items()}
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "python": platform.python_version(),
               "load_average_1min": [load_before, round(os.getloadavg()[0], 2)]}
    payload = {"what": "images/s scoring 32x32 images (DMR score + class + confidence + is_ood), best of "
                       f"{args.repeats}", "nets": nets, "images": n, "machine": machine, "images_per_s": results}
    for name, rate in results.items():
        print(f"{name:>48}: {rate:8.1f} images/s")
    print(json.dumps(machine))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
