"""What several test files share: the project's root and default params, the stages dvc.yaml defines, a tiny copy
of the real project and running commands in it, image files and archives to read, small training sets."""

from __future__ import annotations

import copy
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dmr_core.data.datasets import CIFAR100_CLASSES
from dmr_core.training.head import HeadConfig

ROOT = Path(__file__).resolve().parents[1]
# the committed params.yaml as a dict: read it, never change it (params_with returns a changed copy)
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def project_pythonpath() -> str:
    """PYTHONPATH for a subprocess that imports the project from its checkout (``python -m stages.<name>``)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def params_with(**sections: dict) -> dict:
    """A copy of the default params with each named section updated by the keys given for it."""
    raw = copy.deepcopy(DEFAULTS)
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def dvc_stages(dvc_yaml: Path = ROOT / "dvc.yaml", params: dict = DEFAULTS) -> set[str]:
    """The names of the stages ``dvc.yaml`` defines, each ``foreach`` stage expanded over the params list it
    names (``synth_baseline@kirby``, …), as DVC names them."""
    stages = set()
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" not in stage:
            stages.add(name)
            continue
        section, key = stage["foreach"].removeprefix("${").removesuffix("}").split(".")
        stages |= {f"{name}@{item}" for item in params[section][key]}
    return stages


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

ALL_STAGES = dvc_stages()
SYNTH_BASELINES = {name.split("@")[1] for name in ALL_STAGES if name.startswith("synth_baseline@")}
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


def image_bytes(value: np.ndarray | tuple[int, ...] | int = 0, size: tuple[int, int] = (32, 32), mode: str = "RGB",
                fmt: str = "PNG") -> bytes:
    """An encoded image file: of the uint8 array ``value`` (H×W×3 or H×W), or of ``size`` filled with the colour
    ``value`` (a value per band, or one value for every band), in PIL ``mode`` and format ``fmt``."""
    if isinstance(value, np.ndarray):
        image = Image.fromarray(value).convert(mode)
    else:
        colour = value if isinstance(value, tuple) or mode in ("L", "P", "I", "F", "I;16") else (value,) * len(mode)
        image = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_class_folders(root: Path, classes: tuple[str, ...], counts: dict[str, int], sides: tuple[int, int],
                        modes: tuple[str, ...], rng: np.random.Generator) -> Path:
    """An ID set laid out ``root/<split>/<class>/<i>.png`` (``.jpg`` for CMYK, which PNG cannot hold): ``counts``
    images per class and split, each non-square with sides drawn from ``sides`` (inclusive), one colour per class
    plus noise, saved in ``modes`` in turn."""
    for split, count in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(sides[0], sides[1] + 1, size=2)
                colour = np.array([60 * c + 20, 200 - 50 * c, 40 + 30 * (c % 2)])
                pixels = np.clip(colour + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).convert(modes[i % len(modes)])
                image.save(folder / f"{i}.{'jpg' if image.mode == 'CMYK' else 'png'}")
    return root


def importable_module(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str):
    """A fixture's body: module ``name`` of ``source`` importable from ``folder`` while the test runs (yields its
    name), then forgotten, so the next test imports its own."""
    import sys
    import textwrap

    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Each ``{relative name: content}`` written under ``root`` (folders made as needed)."""
    for name, payload in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def write_tar(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    """A tar archive at ``path`` of ``{member name: content}``, every name under ``top/`` when given."""
    with tarfile.open(path, "w") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# three classes, images of several sizes and modes (none of them 32×32 RGB)
USER_IMAGES = {
    "train/cat/a.png": image_bytes(10, (64, 48), "RGB"),
    "train/cat/b.jpg": image_bytes(20, (40, 40), "L", "JPEG"),
    "train/cat/c.png": image_bytes(30, (100, 30), "RGBA"),
    "train/dog/a.png": image_bytes(40, (32, 32), "P"),
    "train/dog/b.png": image_bytes(50, (17, 90), "RGB"),
    "train/owl/a.png": image_bytes(60, (50, 50), "LA"),
    "train/owl/sub/b.png": image_bytes(70, (33, 31), "RGB"),  # deeper inside its class folder: still that class
    "test/cat/a.png": image_bytes(80, (64, 64), "RGB"),
    "test/dog/a.png": image_bytes(90, (32, 32), "RGB"),
    "test/owl/a.png": image_bytes(100, (20, 20), "L"),
}


def cifar100_archive(home: Path, per_class: int = 2) -> Path:
    """A ``cifar100.tar`` in ``home`` laid out as the offline archives are, ``per_class`` flat images per class and
    split (``per_class`` at most 16)."""
    # every image its own flat colour, so that no test image is a training image (the data stage refuses that)
    files = {f"{split}/{c}/{i}.png": image_bytes((j, 16 * i, 0 if split == "train" else 255), (32, 32), "RGB")
             for split in ("train", "test") for j, c in enumerate(CIFAR100_CLASSES) for i in range(per_class)}
    return write_tar(home / "cifar100.tar", files, "cifar100")
