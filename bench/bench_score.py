"""Benchmark scoring new 32×32 images: images/s of `dmr score`'s internals and of each exported format, DMR alone
and combined (DMR + KNN), at batch 1 / 64 / 500, with the files' sizes and the process's peak RSS.

Uses the run's detector when `dvc repro` has trained it here, else freshly initialised nets of the default shapes
(ResNet-20, a head of 512 hidden units on the 64×8×8 feature map) and a KNN part over 50,000 random unit vectors,
the size of CIFAR-10's training set (speed does not depend on the weights). Measured side by side in one process,
in ``--repeats`` rounds over every variant, best round per variant (other load on the machine then hits each
variant alike):

- pipeline: ``TrainedDetector.score`` on uint8 arrays (extract_features + DMRDetector, + the KNN part);
- pipeline, from files: what `dmr score FOLDER --out rows.csv` runs (``read_inputs`` + ``score_stream``) on a folder
  of PNG files: decoding, the 32×32 rule, batching, scoring, writing the rows;
- pt2 / onnx / torchscript: the ``dmr export`` file loaded by its own runtime (torch.export, onnxruntime,
  torch.jit) through ``ExportedDetector``.

Writes metrics/bench_score.json. The pipeline path's progress bars go to stderr:

    python bench/bench_score.py [--images 2000] [--repeats 3] [--out metrics/bench_score.json] 2>/dev/null
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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

from dmr_core.detectors.combine import CombinedScore, Standardisation
from dmr_core.detectors.knn import KNNScore, unit_rows
from dmr_core.detectors.posthoc import FittedDetector, PosthocSettings
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.rejection_head import RejectionHead
from dmr_core.serving.detector import CombinedPart, TrainedDetector
from dmr_core.serving.export import FORMATS, SUFFIXES, ExportedDetector, export_detector
from dmr_core.serving.inputs import read_inputs
from dmr_core.serving.scoring import score_stream, sink_for


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_nets(combined: bool) -> tuple[TrainedDetector, str]:
    """The run's detector if trained here, else fresh nets of the default shapes."""
    os.chdir(ROOT)
    try:
        from dmr_core.cli import pipeline_commands
        from dmr_core.serving.run import run_artifacts

        return (TrainedDetector.load(run_artifacts(pipeline_commands()), with_combined=combined,
                                     decision="combined" if combined else "dmr"), "the run's trained nets")
    except Exception:  # noqa: BLE001 -- no run here (or no DVC): the speed does not depend on the weights
        torch.manual_seed(0)
        part = None
        if combined:
            module = KNNScore(unit_rows(torch.randn(50_000, 64)), 50).eval()
            detector = FittedDetector("KNN", "penultimate", module, module)
            part = CombinedPart("DMR + KNN", detector, CombinedScore(Standardisation(0, 1), Standardisation(0, 1)),
                                {"0.95": 0.0}, {}, True, PosthocSettings())
        return (TrainedDetector(build_classifier("resnet20").eval(), RejectionHead(64 * 8 * 8, 512).eval(),
                                "feature_map", 0.0, combined=part, decision="combined" if combined else "dmr"),
                "freshly initialised nets of the default shapes (resnet20, head hidden 512 on feature_map; KNN over "
                "50,000 random 64-d unit vectors)")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_rates(variants: dict, repeats: int) -> dict[str, float]:
    """Images/s of each variant (a function returning the images it scored): a warm-up, then ``repeats`` rounds over
    every variant side by side, the best round per variant (other load on the machine then hits each alike)."""
    counts = {name: fn() for name, fn in variants.items()}  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            seconds[name].append(_timed(fn))
    return {name: round(counts[name] / min(times), 1) for name, times in seconds.items()}


def machine_facts(load_before: float) -> dict:
    """The CPU, its cores, torch and its threads, Python, and the load average before and after."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_1min": [load_before, round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "bench_score.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    detectors = {"dmr": load_nets(False), "combined": load_nets(True)}
    nets = detectors["combined"][1]
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    n = len(images)
    load_before = round(os.getloadavg()[0], 2)
    batches = (1, 64, 500)

    def on_batches(scorer, batch_size: int):
        count = min(n, 200) if batch_size == 1 else n  # batch 1 on fewer images: per-call cost dominates

        def run() -> int:
            scorer.batch_size = batch_size
            for start in range(0, count, batch_size):
                scorer.score(images[start:start + batch_size])
            return count
        return run

    sizes = {}
    with tempfile.TemporaryDirectory(prefix="dmr-bench-score-") as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        variants = {}
        for kind, (detector, _) in detectors.items():
            variants.update({f"pipeline_{kind}_bs{b}": on_batches(detector, b) for b in batches})

            def from_files(detector=detector) -> int:
                with sink_for(Path(tmp, "rows.csv"), detector.describe()) as sink:
                    score_stream(detector, read_inputs([folder]), sink, 500, progress=False)
                return n
            variants[f"pipeline_{kind}_from_png_files_bs500"] = from_files
            graph = detector.export_graph()
            for fmt in FORMATS:
                path = Path(tmp, f"{kind}{SUFFIXES[fmt]}")
                export_detector(path, graph, [str(i) for i in range(10)], fmt)
                sizes[f"{fmt}_{kind}"] = round(path.stat().st_size / 1e6, 2)
                exported = ExportedDetector.load(path)
                variants.update({f"{fmt}_{kind}_bs{b}": on_batches(exported, b) for b in batches})
        results = best_rates(variants, args.repeats)
    machine = machine_facts(load_before)
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    payload = {"what": "images/s scoring 32x32 uint8 images (class, confidence, DMR score, combined score where "
                       f"named, decisions), best of {args.repeats}", "nets": nets, "images": n, "machine": machine,
               "images_per_s": results, "file_mb": sizes, "peak_rss_mb_whole_process": peak}
    for name, rate in results.items():
        print(f"{name:>44}: {rate:8.1f} images/s")
    print(json.dumps({"file_mb": sizes, "peak_rss_mb": peak, **machine}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
