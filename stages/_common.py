"""What every stage shares: its command line (the artifact paths dvc.yaml passes), params.yaml, one error path,
and readers of the artifacts other stages write."""

from __future__ import annotations

import inspect
import sys
import tarfile
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer

from dmr_core.data.artifacts import open_zarr
from dmr_core.errors import CheckpointError, DataError, NonFiniteLossError, ParamsError
from dmr_core.params import load_params

EXPECTED_ERRORS = (ParamsError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, tarfile.TarError)


def run(main: Callable[..., None], name: str) -> None:
    """``python -m stages.<name> [VARIANT] --<artifact> PATH ...``: validate params.yaml, then call
    ``main(params, **arguments)``; an expected failure ends in one line on stderr and exit code 1.

    Every parameter of ``main`` after ``params`` is a required option named like it (``metrics_dir`` →
    ``--metrics-dir``) holding the path dvc.yaml passes, except ``variant``, a positional argument that names the
    instance of a ``foreach`` stage (the stage is then reported as ``<name>@<variant>``)."""
    hints = typing.get_type_hints(main)
    arguments = []
    for parameter in list(inspect.signature(main).parameters.values())[1:]:
        default = (typer.Argument(...) if parameter.name == "variant"
                   else typer.Option(..., "--" + parameter.name.replace("_", "-")))
        arguments.append(parameter.replace(annotation=hints[parameter.name], default=default))

    def command(**values) -> None:
        stage = f"{name}@{values['variant']}" if "variant" in values else name
        try:
            main(load_params(), **values)
        except EXPECTED_ERRORS as err:
            print(f"error in stage {stage}: {err}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(f"stage {stage} interrupted; no partial output was kept", file=sys.stderr)
            sys.exit(130)

    command.__signature__ = inspect.Signature(arguments)
    command.__doc__ = main.__doc__ or sys.modules[main.__module__].__doc__
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    app()


def id_split_path(datasets: Path, split: str) -> Path:
    """Where the data stage writes the ID ``train`` / ``test`` split inside its output folder."""
    return datasets / f"cifar10_{split}.zarr"


def ood_set_path(datasets: Path, name: str) -> Path:
    """Where the data stage writes an OOD test set inside its output folder."""
    return datasets / "ood" / f"{name}.zarr"


def read_image_set(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 N×32×32×3, labels int64, attrs) of a set written by the data stage."""
    group = open_zarr(path, "the datasets (stage data)")
    return np.asarray(group["images"][:]), np.asarray(group["labels"][:]).astype(np.int64), dict(group.attrs)


def open_features(path: Path):
    """The zarr group of the features stage: ``id_train``, ``id_test`` and ``ood/<name>``, each holding every
    representation (read lazily), and the attribute ``ood_sets``."""
    return open_zarr(path, "the classifier features (stage features)")


def ood_features(features, representation: str) -> dict:
    """{OOD set: its ``representation`` (a lazy zarr array)} in the order the features stage wrote them."""
    return {name: features[f"ood/{name}"][representation] for name in features.attrs["ood_sets"]}
