"""What every stage shares: artifact paths (mirrored in dvc.yaml), params loading, error reporting."""

from __future__ import annotations

import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from dmr_core.errors import CheckpointError, DataError, NonFiniteLossError, ParamsError
from dmr_core.params import Params, load_params

DATASETS = Path("data/datasets")
MODELS = Path("data/models")
CLASSIFIER = MODELS / "classifier.pt"
GENERATOR = MODELS / "generator.pt"
REJECTION_HEAD = MODELS / "rejection_head.pt"
LATENTS = Path("data/latents.zarr")
CLASS_MEANS = Path("data/class_means.zarr")
OOD_SYNTH = Path("data/ood_synth.zarr")
FEATURES = Path("data/features.zarr")
POSTHOC_SCORES = Path("data/posthoc_scores.zarr")
METRICS = Path("metrics")
PLOTS = Path("plots")

EXPECTED_ERRORS = (ParamsError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, tarfile.TarError)


def id_split_path(split: str) -> Path:
    return DATASETS / f"cifar10_{split}.zarr"


def ood_set_path(name: str) -> Path:
    return DATASETS / "ood" / f"{name}.zarr"


def run(stage: Callable[[Params], None], name: str) -> None:
    """Validate params.yaml, run the stage, and turn expected failures into one readable line."""
    try:
        params = load_params()
        stage(params)
    except EXPECTED_ERRORS as err:
        print(f"error in stage {name}: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"stage {name} interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)


def read_image_set(path: Path):
    """(images uint8 N×32×32×3, labels, attrs) of a set written by the data stage."""
    import numpy as np

    from dmr_core.artifacts import open_zarr

    group = open_zarr(path, "the datasets (stage data)")
    return np.asarray(group["images"][:]), np.asarray(group["labels"][:]).astype(np.int64), dict(group.attrs)


def read_features(set_key: str, representation: str):
    """One representation (feature_map / penultimate / logits) of one set from data/features.zarr."""
    import numpy as np

    from dmr_core.artifacts import open_zarr

    group = open_zarr(FEATURES, "the classifier features (stage features)")
    return np.asarray(group[set_key][representation][:])


def feature_ood_sets() -> list[str]:
    from dmr_core.artifacts import open_zarr

    return list(open_zarr(FEATURES, "the classifier features (stage features)").attrs["ood_sets"])
