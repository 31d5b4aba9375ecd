"""Scoring new images in batches with a trained (or exported) detector, and writing the per-image results.

One row per item: ``path`` (``archive.tar:member`` for tar members), ``predicted_class`` (the class name, or its
index when the run has no names), ``confidence`` (max softmax), ``is_ood`` (the decision of the chosen detector at
the chosen share of ID images kept), ``dmr_score`` and ``dmr_is_ood``, ``combined_score`` and ``combined_is_ood``
when the detector has a combined score, and ``error``: why an item could not be read (then every other field is
empty). The summary counts per folder (or archive) too. A file that is not an image is a row with an error, not
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
from .inputs import TAR_SUFFIXES, Item, read_items

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
        return ["path", "predicted_class", "confidence", "is_ood", "dmr_score", "dmr_is_ood", *combined, "error"]

    @property
    def scored(self) -> int:
        return sum(row["error"] is None for row in self.rows)

    @property
    def unreadable(self) -> int:
        return len(self.rows) - self.scored

    def _count(self, column: str) -> int:
        return sum(bool(row[column]) for row in self.rows if row["error"] is None)

    @property
    def ood(self) -> int:
        return self._count("is_ood")

    @property
    def combined_ood(self) -> int | None:
        return self._count("combined_is_ood") if self.model.get("combined") else None

    def folders(self) -> dict[str, dict[str, int]]:
        """{folder or archive: its scored, OOD and unreadable counts}, in the order first met."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.rows:
            folder = folder_of(row["path"])
            entry = counts.setdefault(folder, {"scored": 0, "ood": 0, "unreadable": 0})
            if row["error"] is not None:
                entry["unreadable"] += 1
            else:
                entry["scored"] += 1
                entry["ood"] += bool(row["is_ood"])
        return counts

    def summary(self) -> dict:
        return {"scored": self.scored, "ood": self.ood, "dmr_ood": self._count("dmr_is_ood"),
                "combined_ood": self.combined_ood, "unreadable": self.unreadable, "folders": self.folders()}

    def decided_by(self) -> str:
        model = self.model
        if model.get("decision") == "combined":
            return f"{model['combined']['method']} (> {model['combined']['threshold']:.4g})"
        return f"the DMR score (> {model['threshold']:.4g})"

    def summary_line(self) -> str:
        keep = self.model.get("keep", "0.95")
        line = f"scored {self.scored} image(s): {self.ood} OOD by {self.decided_by()}, keeping {keep} of ID images"
        if self.model.get("decision_reason"):
            line += f" [{self.model['decision_reason']}]"
        if self.model.get("decision") == "combined":
            line += f"; DMR alone: {self._count('dmr_is_ood')}"
        elif self.combined_ood is not None:
            line += f"; {self.model['combined']['method']}: {self.combined_ood}"
        return line + f"; {self.unreadable} unreadable"


def folder_of(name: str) -> str:
    """The folder (or ``archive.tar``) an item's reported name lies in."""
    if ":" in name and not Path(name).exists():
        archive = name.split(":", 1)[0]
        if archive.lower().endswith(TAR_SUFFIXES):
            return archive
    return str(Path(name).parent)


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
                       confidence=float(scores["confidence"][i]), is_ood=bool(scores["is_ood"][i]),
                       dmr_score=float(scores["dmr_score"][i]), dmr_is_ood=bool(scores["dmr_is_ood"][i]))
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
