"""Training curves: a run's per-epoch loss (and training accuracy) as the table DVC plots read.

One row per epoch, counted from 1, with columns ``epoch``, ``loss`` and, for a model that classifies, ``accuracy``
(percent). dvc.yaml's top-level ``plots`` name the columns (x: epoch), so `dvc plots show` draws the curves and
`dvc plots diff` overlays them across commits and experiments. The curves are written once, after training, from
the :class:`~dmr_core.training.loop.History` the loop already returns: writing them changes no draw of any RNG
and no trained weight.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.artifacts import atomic_output
from .loop import History

# significant digits kept in the CSV: enough to tell epochs apart, few enough for readable diffs in git
DIGITS = 6


def curve_table(history: History) -> pd.DataFrame:
    """The rows DVC plots: ``epoch`` (1-based), ``loss`` and, when the history has it, ``accuracy``."""
    columns: dict[str, list] = {"epoch": list(range(1, len(history.loss) + 1)), "loss": list(history.loss)}
    if history.accuracy is not None:
        if len(history.accuracy) != len(history.loss):
            raise ValueError(f"{len(history.accuracy)} accuracy values for {len(history.loss)} epochs of loss")
        columns["accuracy"] = list(history.accuracy)
    return pd.DataFrame(columns)


def write_curve(path: str | Path, history: History) -> None:
    """Write ``history`` as a CSV training curve at ``path``, atomically (a run with no epoch writes the header)."""
    with atomic_output(path) as tmp:
        curve_table(history).to_csv(tmp, index=False, float_format=f"%.{DIGITS}g")
