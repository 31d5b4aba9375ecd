"""Benchmark the pipeline: on a fixed CIFAR-10 subset, or a whole profile end to end.

Copies the project (the working tree's committed files, or ``--ref``) to a scratch folder, shrinks
params.yaml to the subset (``-S key=value`` over it, e.g. ``data.image_size=64``), runs each stage of the DMR path
through DVC one at a time, and prints wall time, images/s and peak RSS per stage (encode = latents, synthesize =
ood_synth, feature extraction = features, head training = rejection_head), then every other stage (post-hoc and
synthesis baselines, combined score, report) one at a time with its wall time and peak RSS, the full-run time and
the time of a λ-only re-run. Writes the figures as JSON (default metrics/bench.json) so that `dvc metrics diff`
shows speed regressions. ``--compare REF`` benchmarks an older commit in the same invocation and prints both side
by side.

``--profile NAME`` instead runs every stage of a profile (``dmr profiles``; its params over params.yaml, then
``-S key=value`` over them) through DVC one at a time, in pipeline order, and prints each stage's wall time,
images/s and peak RSS and the total against the 10-minute budget of ``gpu_paper_scale``; it writes
metrics/bench_gpu.json (the device named inside) on a GPU machine, elsewhere only where ``--out`` says.
``--until STAGE`` stops after that stage.

    DMR_DATA_HOME=../shared/data python bench/bench.py --train-per-class 500
    DMR_DATA_HOME=../shared/data python bench/bench.py -S data.image_size=64 --out metrics/bench_64px.json
    DMR_DATA_HOME=../shared/data python bench/bench.py --compare <old-commit> --out /tmp/bench.json
    DMR_DATA_HOME=/abs/path/to/data python bench/bench.py --profile gpu_paper_scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working tree's library (profiles, params), as the stages in its copy use

from dmr_core.synthesis.variants import VARIANTS, variant_sample_count  # noqa: E402 -- after the path
# what gpu_paper_scale must fit in, end to end on one GPU
GPU_BUDGET_S = 600
GPU_FIGURES = ROOT / "metrics" / "bench_gpu.json"
# the folders the stages find data, weights and downloads in, made absolute before the stages run in the copy
PATH_VARIABLES = ("DMR_DATA_HOME", "DMR_MODEL_HOME", "DMR_CACHE")
# the DMR path, up to its evaluation
DMR_PATH = ("data", "classifier", "perceptual_net", "generator", "latents", "class_means", "ood_synth", "features",
            "rejection_head", "eval")


def dmr_path(project: Path) -> list[str]:
    """The stages of ``DMR_PATH`` that the project's dvc.yaml has, in order."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return [stage for stage in DMR_PATH if stage in stages]


def copy_project(dest: Path, ref: str | None = None) -> None:
    """The tracked files of the working tree (or of commit ``ref``), without results and lock."""
    if ref is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        (dest / "dvc.lock").unlink(missing_ok=True)
    else:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for name in filter(None, files.split("\0")):
            if (ROOT / name).is_file() and not name.startswith(("metrics/", "plots/")) and name != "dvc.lock":
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@dmr.invalid", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)


def absolute_path_variables() -> None:
    """A relative ``DMR_DATA_HOME`` (etc.) names a folder against the folder the bench started in; the stages run
    in the scratch copy, so make it absolute first."""
    for name in PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.path.expanduser(os.environ[name]))


def stage_images(params: dict, n_train: int, n_test: int, n_ood: int) -> dict[str, int]:
    """Images each stage processes (passes × images), by stage name (``synth_baseline@<variant>`` per variant)."""
    n_synth, head_epochs = params["synth"]["num_samples"], params["head"]["epochs"]
    classifier = params["classifier"]
    images = {
        "data": n_train + n_test + n_ood,
        "classifier": n_train * classifier["epochs"] + n_test,
        "generator": n_train * params["generator"]["epochs"] + n_test,
        "latents": n_train, "class_means": n_train, "ood_synth": n_synth,
        "features": n_train + n_test + n_ood,
        "rejection_head": (n_train + n_synth) * head_epochs + n_synth,
        "baselines": n_test + n_ood, "eval": n_test + n_ood, "combine": n_test + n_ood,
    }
    asked = params["synth_baselines"]["num_samples"]
    for variant in params["synth_baselines"]["variants"]:
        # synthesised (dmr_kirby: two sets), their features, then the head over ID train and them
        count = variant_sample_count(variant, asked, n_synth, n_train) if variant in VARIANTS else int(asked)
        synthesised = count * (2 if variant == "dmr_kirby" else 1)
        images[f"synth_baseline@{variant}"] = synthesised + (n_train + synthesised) * head_epochs
    return images


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of it and its descendants)."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: progress bars would fill a pipe and block
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read().decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def bench(train_per_class: int, ref: str | None = None, overrides: list[str] = ()) -> dict:
    """Benchmark the working tree (or commit ``ref``) with ``overrides`` (``key=value``) over the subset's
    params; returns the figures and prints them as it goes."""
    from dmr_core.profiles.compose import apply_overrides, parse_assignment

    n_train = 10 * train_per_class
    n_test = 10 * max(1, train_per_class // 5)
    print(f"--- {ref or 'working tree'}: {n_train} train images{' ' + ' '.join(overrides) if overrides else ''}")
    with tempfile.TemporaryDirectory(prefix="dmr-bench-") as tmp:
        project = Path(tmp)
        copy_project(project, ref)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["data"].update(train_per_class=train_per_class, test_per_class=n_test // 10,
                              ood_max=n_test, gaussian_count=n_test)
        # the default's ratio of synthesised to training images (50,000 : 50,000 in the paper), on the subset
        full_train = 50000
        for section in ("synth", "synth_baselines"):
            if params[section]["num_samples"] != "auto":  # auto follows synth.num_samples
                params[section]["num_samples"] = max(1, round(params[section]["num_samples"] * n_train / full_train))
        # a subset of the training images: at most all of them (params validation refuses more)
        if "reference_images" in params["baselines"]:  # (older commits, for --compare, lack the key)
            params["baselines"]["reference_images"] = min(params["baselines"]["reference_images"], n_train)
        params = apply_overrides(params, dict(parse_assignment(text) for text in overrides))
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        ood_images = n_test * len(params["data"]["ood_sets"])
        images = stage_images(params, n_train, n_test, ood_images)
        stages = {}
        for stage in dmr_path(project):
            wall, rss = timed(["dvc", "repro", "--single-item", stage], project)
            if stage == "data":  # the counts the data stage found (a suite's sets, as stored and encoded)
                data = json.loads((project / "metrics" / "data.json").read_text())
                ood_images = sum(entry["images"] for entry in data["ood"].values())
                images = stage_images(params, data["id_train"]["images"], data["id_test"]["images"], ood_images)
            rate = images.get(stage, 0) / wall
            stages[stage] = {"wall_s": round(wall, 2), "images_per_s": round(rate, 1), "peak_rss_mb": round(rss, 1)}
            print(f"{stage:>15}: {wall:7.1f} s  {rate:9.1f} images/s  peak RSS {rss:7.1f} MB")
        dmr_path_s = sum(s["wall_s"] for s in stages.values())
        others = {}
        for stage in (stage for stage in pipeline_order(project) if stage not in stages):
            wall, rss = timed(["dvc", "repro", "--single-item", stage], project)
            others[stage] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1)}
            print(f"{stage:>15}: {wall:7.1f} s  {'':>19}peak RSS {rss:7.1f} MB")
        rest = sum(s["wall_s"] for s in others.values())
        rest_rss = max((s["peak_rss_mb"] for s in others.values()), default=0.0)
        print(f"{'baselines+report':>15}: {rest:7.1f} s  peak RSS {rest_rss:7.1f} MB")
        params["synth"]["lambda_max"] = 2.0
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        rerun, rerun_rss = timed(["dvc", "repro"], project)
    full = dmr_path_s + rest
    print(f"{'DMR path':>15}: {dmr_path_s:7.1f} s;  full run {full:.1f} s;  λ-only re-run: {rerun:.1f} s "
          f"({100 * rerun / full:.0f} % of the full run)")
    return {
        "subset": {"train_images": n_train, "test_images": n_test, "ood_images": ood_images},
        "overrides": list(overrides), "stages": stages, "other_stages": others,
        "dmr_path_s": round(dmr_path_s, 2), "baselines_and_report_s": round(rest, 2),
        "baselines_and_report_peak_rss_mb": round(rest_rss, 1), "full_run_s": round(full, 2),
        "lambda_rerun_s": round(rerun, 2), "lambda_rerun_pct_of_full": round(100 * rerun / full, 1),
        "lambda_rerun_peak_rss_mb": round(rerun_rss, 1),
        "peak_rss_mb": round(max([rest_rss, rerun_rss] + [s["peak_rss_mb"] for s in stages.values()]), 1),
    }


def pipeline_order(project: Path) -> list[str]:
    """Every stage of the project's pipeline (``foreach`` instances as ``<stage>@<item>``), each after the stages it
    depends on, otherwise in dvc.yaml's order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        position = {stage: i for i, stage in enumerate(repo.index.stages)}
        order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda stage: position[stage])
        return [stage.name for stage in order if stage.cmd]


def bench_profile(profile: str, overrides: list[str], until: str | None = None) -> dict:
    """Run every stage of ``profile`` (with ``overrides``, ``key=value``) through DVC, one at a time in pipeline
    order; the wall time, images/s and peak RSS of each, printed as they come, and the total."""
    from dmr_core.errors import ParamsError
    from dmr_core.params import parse_params
    from dmr_core.profiles.compose import compose_params, load_profile, parse_assignment

    absolute_path_variables()
    try:  # any invalid value ends here, in one line, before a stage starts
        params = compose_params(yaml.safe_load((ROOT / "params.yaml").read_text()), load_profile(profile),
                                [parse_assignment(text) for text in overrides])
        parse_params(params)
    except ParamsError as err:
        raise SystemExit(f"profile {profile}: {err}") from None
    with tempfile.TemporaryDirectory(prefix="dmr-bench-") as tmp:
        project = Path(tmp)
        copy_project(project)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        order = pipeline_order(project)
        if until is not None and until not in order:
            raise SystemExit(f"--until {until}: not a stage of this pipeline ({', '.join(order)})")
        print(f"--- profile {profile}{' ' + ' '.join(overrides) if overrides else ''}: {len(order)} stages, "
              f"classifier {params['classifier']['arch']} for {params['classifier']['epochs']} epochs")
        stages, images, counts = {}, {}, {}
        for stage in order:
            wall, rss = timed(["dvc", "repro", "--single-item", stage], project)
            if stage == "data":  # the image counts the data stage found decide every later stage's
                data = json.loads((project / "metrics" / "data.json").read_text())
                counts = {"train": data["id_train"]["images"], "test": data["id_test"]["images"],
                          "ood": sum(entry["images"] for entry in data["ood"].values())}
                images = stage_images(params, counts["train"], counts["test"], counts["ood"])
            stages[stage] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1)}
            line = f"{stage:>24}: {wall:7.1f} s"
            if images.get(stage):
                stages[stage]["images_per_s"] = round(images[stage] / wall, 1)
                line += f"  {images[stage] / wall:9.1f} images/s"
            print(f"{line}  peak RSS {rss:7.1f} MB")
            if stage == until:
                break
    total = sum(s["wall_s"] for s in stages.values())
    print(f"{'total':>24}: {total:7.1f} s ({total / 60:.1f} min; the budget of gpu_paper_scale on one GPU is "
          f"{GPU_BUDGET_S / 60:.0f} min{', only the stages up to ' + until if until else ''})")
    return {"profile": profile, "overrides": overrides, "classifier_epochs": params["classifier"]["epochs"],
            "images": counts, "stages": stages, "total_s": round(total, 2),
            "complete": until is None or until == order[-1], "budget_s": GPU_BUDGET_S,
            "within_budget": total <= GPU_BUDGET_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--compare", metavar="REF", help="also benchmark this git commit, side by side")
    parser.add_argument("--profile", metavar="NAME", help="run this profile end to end instead (dmr profiles)")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="a params value over the subset's, or with --profile over the profile's (as dvc exp "
                             "run -S)")
    parser.add_argument("--until", metavar="STAGE", help="with --profile: stop after this stage")
    parser.add_argument("--out", type=Path, help="the JSON file to write (default metrics/bench.json; with "
                                                 "--profile, metrics/bench_gpu.json on a GPU machine)")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "device": device}}
    if args.profile:
        if args.out is None and device == "cpu":
            raise SystemExit(f"no GPU is visible, so the figures are not the GPU's: name the file to write with "
                             f"--out ({GPU_FIGURES.relative_to(ROOT)} holds a GPU's)")
        result.update(bench_profile(args.profile, args.set_param, args.until))
        out = args.out or GPU_FIGURES
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return
    args.out = args.out or ROOT / "metrics" / "bench.json"
    result.update(bench(args.train_per_class, overrides=args.set_param))
    if args.compare:
        before = bench(args.train_per_class, args.compare)
        print(f"\n{'stage':>15} | {args.compare[:10]:>12} | {'now':>8} | speed-up")
        for stage, now in result["stages"].items():
            if stage not in before["stages"]:
                continue
            old = before["stages"][stage]["wall_s"]
            print(f"{stage:>15} | {old:10.1f} s | {now['wall_s']:6.1f} s | {old / now['wall_s']:5.2f}×")
        for key in ("dmr_path_s", "full_run_s", "lambda_rerun_s"):
            print(f"{key:>15} | {before[key]:10.1f} s | {result[key]:6.1f} s | {before[key] / result[key]:5.2f}×")
        result["compared_with"] = {"ref": args.compare, **before}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
