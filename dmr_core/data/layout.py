"""Where the data and features stages put each set inside their outputs, and readers of those sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .artifacts import ArtifactArray, open_zarr

def id_split_path(datasets: Path, split: str) -> Path:
    """Where the data stage writes the ID ``train`` / ``test`` split inside its output folder."""
    return datasets / f"id_{split}.zarr"


SETS_INDEX = "sets.json"


def write_sets_index(datasets: Path, class_names: list[str], ood_sets: list[str]) -> None:
    """The data stage's index of what it wrote: the ID classes in label order and the OOD sets in order."""
    (datasets / SETS_INDEX).write_text(json.dumps({"class_names": class_names, "ood_sets": ood_sets}, indent=2))


def read_sets_index(datasets: Path) -> dict:
    """``{"class_names": [...], "ood_sets": [...]}`` as the data stage wrote them."""
    path = datasets / SETS_INDEX
    try:
        index = json.loads(path.read_text())
        if not isinstance(index.get("class_names"), list) or not isinstance(index.get("ood_sets"), list):
            raise ValueError("no class_names / ood_sets lists")
    except FileNotFoundError:
        raise DataError(f"{path} not found: the datasets (stage data) are incomplete or from an older version; run "
                        "`dvc repro data` (or `dvc checkout --force data/datasets`)") from None
    except (ValueError, AttributeError) as err:
        raise DataError(f"{path} is damaged ({err}); run `dvc checkout --force {datasets}` or `dvc repro data`") from None
    return index


def ood_set_path(datasets: Path, name: str) -> Path:
    """Where the data stage writes an OOD test set inside its output folder."""
    return datasets / "ood" / f"{name}.zarr"


def open_image_set(path: Path) -> tuple[ArtifactArray, np.ndarray, dict]:
    """(images uint8 N×S×S×3 as a stored array, read only where indexed or batched (``dmr_core.data.streams``),
    labels int64, attrs) of a set written by the data stage."""
    group = open_zarr(path, "the datasets (stage data)")
    return group["images"], np.asarray(group["labels"][:]).astype(np.int64), dict(group.attrs)


def read_image_set(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 N×S×S×3, labels int64, attrs) of a set written by the data stage, its images read whole: for
    training, which visits them in random order (every other reader streams them: ``open_image_set``)."""
    group = open_zarr(path, "the datasets (stage data)")
    return np.asarray(group["images"][:]), np.asarray(group["labels"][:]).astype(np.int64), dict(group.attrs)


def open_features(path: Path):
    """The zarr group of the features stage: ``id_train``, ``id_test`` and ``ood/<name>``, each holding every
    representation (read lazily), and the attribute ``ood_sets``."""
    return open_zarr(path, "the classifier features (stage features)")


def ood_features(features, representation: str) -> dict:
    """{OOD set: its ``representation`` (a lazy zarr array)} in the order the features stage wrote them."""
    return {name: features[f"ood/{name}"][representation] for name in features.attrs["ood_sets"]}
