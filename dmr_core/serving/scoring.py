"""Scoring new images in batches with a trained (or exported) detector, writing the per-image results as they are
scored.

One row per item: ``path`` (``archive.tar:member`` for tar members), ``predicted_class`` (the class name, or its
index when the run has no names), ``confidence`` (max softmax), ``is_ood`` (the decision of the chosen detector at
the chosen share of ID images kept), ``dmr_score`` and ``dmr_is_ood``, ``combined_score`` and ``combined_is_ood``
when the detector has a combined score, and ``error``: why an item could not be read (then every other field is
empty). The summary counts per folder (or archive) too. A file that is not an image is a row with an error, not
a failure: one bad file does not stop a folder.

Rows stream: images are read one at a time, scored a batch at a time, and each batch's rows are written (to the
CSV or JSON file, or the terminal) before the next batch is read, so memory does not grow with the number of
images; only the counts are kept. A file output is written under a temporary name and moved into place at the end,
so a failure leaves no partial file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from tqdm import tqdm

from ..data.artifacts import atomic_output
from ..errors import DataError
from .inputs import TAR_SUFFIXES, Decoded

OUTPUT_FORMATS = (".csv", ".json")


class Scorer(Protocol):
    """What scoring needs of a detector: ``TrainedDetector`` and ``ExportedDetector`` both provide it."""

    class_names: list[str] | None
    combined: Any
    image_size: int  # the side the images are decoded to: the run's data.image_size

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...


def columns_of(model: dict) -> list[str]:
    combined = ["combined_score", "combined_is_ood"] if model.get("combined") else []
    return ["path", "predicted_class", "confidence", "is_ood", "dmr_score", "dmr_is_ood", *combined, "error"]


def folder_of(name: str) -> str:
    """The folder (or ``archive.tar``) an item's reported name lies in (by os.path: pathlib would intern the name
    for the life of the process)."""
    if ":" in name and not os.path.exists(name):
        archive = name.split(":", 1)[0]
        if archive.lower().endswith(TAR_SUFFIXES):
            return archive
    return os.path.dirname(name) or "."


@dataclass
class ScoreCounts:
    """The summary of a scoring run, counted as rows pass: scored, OOD by each detector, unreadable, per folder."""

    model: dict
    scored: int = 0
    ood: int = 0
    dmr_ood: int = 0
    combined: int = 0
    unreadable: int = 0
    per_folder: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, row: dict) -> None:
        entry = self.per_folder.setdefault(folder_of(row["path"]), {"scored": 0, "ood": 0, "unreadable": 0})
        if row["error"] is not None:
            self.unreadable += 1
            entry["unreadable"] += 1
            return
        self.scored += 1
        entry["scored"] += 1
        self.ood += bool(row["is_ood"])
        entry["ood"] += bool(row["is_ood"])
        self.dmr_ood += bool(row["dmr_is_ood"])
        self.combined += bool(row.get("combined_is_ood"))

    @property
    def combined_ood(self) -> int | None:
        return self.combined if self.model.get("combined") else None

    def summary(self) -> dict:
        return {"scored": self.scored, "ood": self.ood, "dmr_ood": self.dmr_ood, "combined_ood": self.combined_ood,
                "unreadable": self.unreadable, "folders": self.per_folder}

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
            line += f"; DMR alone: {self.dmr_ood}"
        elif self.combined_ood is not None:
            line += f"; {self.model['combined']['method']}: {self.combined_ood}"
        return line + f"; {self.unreadable} unreadable"


class RowSink(AbstractContextManager):
    """Where rows go, a batch at a time; ``finish(counts)`` once every row is written."""

    def write(self, rows: list[dict]) -> None: ...

    def finish(self, counts: ScoreCounts) -> None: ...


class CsvSink(RowSink):
    """Rows as CSV (pandas; empty fields for unreadable items)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns, self._stack = path, columns, ExitStack()
        self._header = True

    def __enter__(self) -> CsvSink:
        tmp = self._stack.enter_context(atomic_output(self.path))
        self.handle: TextIO = self._stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        return self

    def write(self, rows: list[dict]) -> None:
        import pandas as pd

        pd.DataFrame(rows, columns=self.columns).to_csv(self.handle, header=self._header, index=False)
        self._header = False

    def finish(self, counts: ScoreCounts) -> None:
        if self._header:  # no row at all: the header alone
            self.write([])

    def __exit__(self, *exc) -> bool:
        self.handle.flush()
        return self._stack.__exit__(*exc)


class JsonSink(RowSink):
    """``{"model": …, "images": [rows…], "summary": …}``: one row per line, the summary last, once it is known."""

    def __init__(self, path: Path, model: dict) -> None:
        self.path, self.model, self._stack, self._first = path, model, ExitStack(), True

    def __enter__(self) -> JsonSink:
        tmp = self._stack.enter_context(atomic_output(self.path))
        self.handle: TextIO = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        self.handle.write('{\n"model": ' + json.dumps(self.model) + ',\n"images": [')
        return self

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self.handle.write(("\n" if self._first else ",\n") + json.dumps(row))
            self._first = False

    def finish(self, counts: ScoreCounts) -> None:
        self.handle.write('\n],\n"summary": ' + json.dumps(counts.summary(), indent=2) + "\n}\n")

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)


class TableSink(RowSink):
    """Rows as a fixed-width text table, printed a batch at a time (the widths are fixed by the first batch)."""

    def __init__(self, columns: list[str], stream: TextIO | None = None) -> None:
        self.columns, self.stream, self.widths = columns, stream or sys.stdout, None

    def __enter__(self) -> TableSink:
        return self

    def write(self, rows: list[dict]) -> None:
        cells = [[_cell(row[c]) for c in self.columns] for row in rows]
        lines = []
        if self.widths is None:
            self.widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, self.widths)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, self.widths)).rstrip() for r in cells]
        if lines:
            self.stream.write("\n".join(lines) + "\n")

    def finish(self, counts: ScoreCounts) -> None:
        if self.widths is None:
            self.write([])

    def __exit__(self, *exc) -> bool:
        self.stream.flush()
        return False


def check_output(path: Path) -> None:
    """Refuse an output file whose format is unknown, or whose folder cannot be written, before any image is
    scored."""
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise DataError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; name a .csv or .json file")
    if path.is_dir():
        raise DataError(f"{path} is a folder; name a .csv or .json file to write")


def sink_for(out: Path | None, model: dict, stream: TextIO | None = None) -> RowSink:
    """The sink of ``--out``: a CSV or JSON file by its suffix, else the terminal table."""
    columns = columns_of(model)
    if out is None:
        return TableSink(columns, stream)
    check_output(out)
    return JsonSink(out, model) if out.suffix.lower() == ".json" else CsvSink(out, columns)


def _class_name(index: int, names: list[str] | None) -> str:
    return names[index] if names and 0 <= index < len(names) else str(index)


def score_stream(detector: Scorer, decoded: Iterable[Decoded], sink: RowSink, batch_size: int = 500,
                 progress: bool = True, on_unreadable: Callable[[str, str], None] | None = None) -> ScoreCounts:
    """Score every decoded item ``batch_size`` images at a time, in input order, writing each batch's rows to
    ``sink`` (an entered one) before reading on; ``on_unreadable(name, why)`` is told of each item that cannot be
    read as it is met. Returns the counts; the sink is finished."""
    model = detector.describe()
    counts = ScoreCounts(model)
    columns = columns_of(model)
    rows: list[dict] = []
    images: list[np.ndarray] = []
    pending: list[dict] = []

    def flush() -> None:
        if pending:
            scores = detector.score(np.stack(images))
            for i, row in enumerate(pending):
                row.update(predicted_class=_class_name(int(scores["predicted"][i]), detector.class_names),
                           confidence=float(scores["confidence"][i]), is_ood=bool(scores["is_ood"][i]),
                           dmr_score=float(scores["dmr_score"][i]), dmr_is_ood=bool(scores["dmr_is_ood"][i]))
                if "combined_score" in columns:
                    row.update(combined_score=float(scores["combined_score"][i]),
                               combined_is_ood=bool(scores["combined_is_ood"][i]))
        for row in rows:
            counts.add(row)
        sink.write(rows)
        rows.clear(), images.clear(), pending.clear()

    for item in tqdm(decoded, desc="scoring", unit="image", disable=not progress):
        row = dict.fromkeys(columns)
        row["path"] = item.name
        rows.append(row)
        if item.error is not None:
            row["error"] = item.error
            if on_unreadable is not None:
                on_unreadable(item.name, item.error)
        else:
            pending.append(row)
            images.append(item.image)
        if len(pending) >= batch_size or len(rows) >= 4 * batch_size:
            flush()
    flush()
    sink.finish(counts)
    return counts


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
