"""What several test files share: a tiny copy of the real project, running commands in it, small training sets."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmr_core.synthesis.variants import VARIANTS
from dmr_core.training.head import HeadConfig

ROOT = Path(__file__).resolve().parents[1]

# Small enough to run the whole pipeline in about a minute on two CPU cores.
TINY_PARAMS = {
    "data": {"train_per_class": 20, "test_per_class": 10, "ood_max": 30, "gaussian_count": 30},
    "classifier": {"epochs": 1, "batch_size": 32},
    "generator": {"epochs": 1, "batch_size": 32, "latent_dim": 16, "base_channels": 8},
    "synth": {"num_samples": 200, "batch_size": 64},
    "head": {"epochs": 2, "hidden": 64, "batch_size": 32},
    "baselines": {"reference_images": 100},
    "synth_baselines": {"num_samples": 100},
}

SYNTH_BASELINES = set(VARIANTS)
ALL_STAGES = {"data", "classifier", "perceptual_net", "generator", "latents", "class_means", "ood_synth", "figures",
              "features", "rejection_head", "eval", "baselines", "combine", "outlier_exposure", "report"} | {
                  f"synth_baseline@{v}" for v in VARIANTS}
# what a change of a synth parameter (e.g. lambda_max) must re-run, and nothing else
DOWNSTREAM_OF_SYNTH = {"ood_synth", "rejection_head", "eval", "combine", "report"}

# a small head and recipe for unit tests of head training
HEAD = HeadConfig(hidden=32, epochs=5, batch_size=64, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                  schedule="cosine", seed=0)


def blobs(n: int = 400, d: int = 16, shift: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ID and OOD float16 features: two Gaussian blobs ``shift`` apart in every coordinate."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float16), (rng.normal(size=(n, d)) + shift).astype(np.float16)


# the environment variables that name folders (offline archives, pretrained weights, downloads)
PATH_VARIABLES = ("DMR_DATA_HOME", "DMR_MODEL_HOME", "DMR_CACHE")


def make_path_variables_absolute(environ: MutableMapping[str, str], start: Path) -> None:
    """Rewrite each relative ``PATH_VARIABLES`` value as an absolute path against ``start``, the folder pytest was
    started from: the end-to-end tests run the stages in a copy of the project in a temporary folder, where a
    relative path would name another folder than the one the user meant."""
    for name in PATH_VARIABLES:
        value = environ.get(name)
        if value and not os.path.isabs(os.path.expanduser(value)):
            environ[name] = os.path.abspath(start / value)


def data_home_available() -> bool:
    home = os.environ.get("DMR_DATA_HOME")
    return bool(home) and (Path(home) / "cifar10.tar").is_file()


needs_data = pytest.mark.skipif(
    not data_home_available(), reason="needs DMR_DATA_HOME with cifar10.tar (the offline datasets)"
)

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "dmr-tests", "GIT_AUTHOR_EMAIL": "tests@dmr.invalid",
                "GIT_COMMITTER_NAME": "dmr-tests", "GIT_COMMITTER_EMAIL": "tests@dmr.invalid"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_tiny_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project's tracked files to ``dest``, shrink params.yaml, and commit it in a fresh git repo."""
    files = run(["git", "ls-files", "-z"], ROOT).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith(("metrics/", "plots/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in {**TINY_PARAMS, **(overrides or {})}.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        run(cmd, dest)
    return dest


def copy_project(project: Path, dest: Path) -> Path:
    """A copy of a DVC project (its git history, DVC cache and outputs) that DVC can work in on its own, without
    the source's DVC scratch state (locks, experiment temporaries)."""
    shutil.copytree(project, dest, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return dest


def stages_run(output: str) -> list[str]:
    """Names of the stages DVC actually executed, from `dvc repro` / `dvc exp run` output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
