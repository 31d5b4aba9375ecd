"""Scoring new images in batches with a trained (or exported) detector, and writing the per-image results.

One row per item: ``path`` (``archive.tar:member`` for tar members), ``predicted_class`` (the class name, or its
index when the run has no names), ``confidence`` (max softmax), ``dmr_score``, ``is_ood`` (at the run's
threshold), ``combined_score`` and ``combined_is_ood`` when the run has a combined score, and ``error``: why an
item could not be read (then every other field is empty). A file that is not an image is a row with an error, not
a failure: one bad file does not stop a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..data.artifacts import atomic_output, write_json
from ..errors import DataError
from .inputs import Item, read_items

OUTPUT_FORMATS = (".csv", ".json")


class Scorer(Protocol):
    """What scoring needs of a detector: ``TrainedDetector`` and ``ExportedDetector`` both provide it."""

    class_names: list[str] | None
    combined: Any

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...


@dataclass
class ScoreReport:
    """Every row, the counts of the summary, and what decided the outputs (thresholds, class names)."""

    rows: list[dict] = field(default_factory=list)
    model: dict = field(default_factory=dict)

    def columns(self) -> list[str]:
        combined = ["combined_score", "combined_is_ood"] if self.model.get("combined") else []
        return ["path", "predicted_class", "confidence", "dmr_score", "is_ood", *combined, "error"]

    @property
    def scored(self) -> int:
        return sum(row["error"] is None for row in self.rows)

    @property
    def unreadable(self) -> int:
        return len(self.rows) - self.scored

    @property
    def ood(self) -> int:
        return sum(bool(row["is_ood"]) for row in self.rows if row["error"] is None)

    @property
    def combined_ood(self) -> int | None:
        if not self.model.get("combined"):
            return None
        return sum(bool(row["combined_is_ood"]) for row in self.rows if row["error"] is None)

    def summary(self) -> dict:
        return {"scored": self.scored, "ood": self.ood, "combined_ood": self.combined_ood,
                "unreadable": self.unreadable}

    def summary_line(self) -> str:
        line = (f"scored {self.scored} image(s): {self.ood} OOD (DMR score > {self.model['threshold']:.4g})")
        if self.combined_ood is not None:
            combined = self.model["combined"]
            line += f", {self.combined_ood} OOD by {combined['method']} (> {combined['threshold']:.4g})"
        return line + f"; {self.unreadable} unreadable"


def _class_name(index: int, names: list[str] | None) -> str:
    return names[index] if names and 0 <= index < len(names) else str(index)


def score_items(detector: Scorer, items: list[Item], batch_size: int = 500, progress: bool = True,
                on_unreadable: Callable[[str, str], None] | None = None) -> ScoreReport:
    """Decode and score every item, ``batch_size`` images at a time, in input order; ``on_unreadable(name, why)``
    is told of each item that cannot be read as it is met."""
    report = ScoreReport(model=detector.describe())
    pending: list[tuple[dict, np.ndarray]] = []
    columns = report.columns()

    def flush() -> None:
        if not pending:
            return
        scores = detector.score(np.stack([image for _, image in pending]))
        for i, (row, _) in enumerate(pending):
            row.update(predicted_class=_class_name(int(scores["predicted"][i]), detector.class_names),
                       confidence=float(scores["confidence"][i]), dmr_score=float(scores["dmr_score"][i]),
                       is_ood=bool(scores["is_ood"][i]))
            if "combined_score" in columns:
                row.update(combined_score=float(scores["combined_score"][i]),
                           combined_is_ood=bool(scores["combined_is_ood"][i]))
        pending.clear()

    for decoded in tqdm(read_items(items), total=len(items), desc="scoring", unit="image", disable=not progress):
        row = dict.fromkeys(columns)
        row["path"] = decoded.name
        report.rows.append(row)
        if decoded.error is not None:
            row["error"] = decoded.error
            if on_unreadable is not None:
                on_unreadable(decoded.name, decoded.error)
            continue
        pending.append((row, decoded.image))
        if len(pending) >= batch_size:
            flush()
    flush()
    return report


def check_output(path: Path) -> None:
    """Refuse an output file whose format is unknown before any image is scored."""
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise DataError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; name a .csv or .json file")


def write_report(report: ScoreReport, path: Path) -> None:
    """The rows as CSV (pandas; empty fields for unreadable items) or as JSON with the summary and what decided
    the outputs, chosen by the suffix; written atomically, so a failure leaves no partial file."""
    check_output(path)
    if path.suffix.lower() == ".json":
        write_json(path, {"model": report.model, "summary": report.summary(), "images": report.rows})
        return
    import pandas as pd

    with atomic_output(path) as tmp:
        pd.DataFrame(report.rows, columns=report.columns()).to_csv(tmp, index=False)


def format_table(report: ScoreReport) -> str:
    """The rows as a fixed-width text table (for the terminal)."""
    columns = report.columns()
    cells = [[_cell(row[c]) for c in columns] for row in report.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
