"""The ``dmr`` command: run a stage, check params, show a quick summary of the results, score new images with the
trained detector, or export it as one TorchScript file."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from .params import ParamsError, load_params

app = typer.Typer(help="DMR OOD-detection pipeline. The main entry point is `dvc repro`; these are helpers.",
                  no_args_is_help=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print one line saying what is wrong and what to do, and exit with ``code`` (no traceback)."""
    typer.echo(" ".join(message.split()), err=True)
    raise typer.Exit(code)


@app.command()
def check_params(path: Path = typer.Option(Path("params.yaml"), help="params file to validate")) -> None:
    """Validate params.yaml without running anything: every check the stages make of their params, so "ok" here
    means no stage will refuse the file."""
    try:
        load_params(path)
    except ParamsError as err:
        _fail(str(err))
    typer.echo(f"{path}: ok")


def pipeline_commands() -> dict[str, str]:
    """{stage name: its command} of the dvc.yaml in the current folder, as DVC resolves them (``foreach``
    instances named ``<stage>@<item>``)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            return {stage.addressing: stage.cmd for stage in repo.index.stages if stage.cmd}
    except DvcException as err:
        _fail(f"cannot read the pipeline here ({err}); run from the project root", 2)


@app.command()
def stage(name: str = typer.Argument(..., help="a stage of dvc.yaml, e.g. eval or synth_baseline@mlm")) -> None:
    """Run one stage's command from dvc.yaml outside DVC's caching (normally `dvc repro` runs it)."""
    commands = pipeline_commands()
    if name not in commands:
        _fail(f"unknown stage {name!r}; choose from {', '.join(commands) or '(none: dvc.yaml has no stages)'}", 2)
    argv = shlex.split(commands[name])
    if argv[0] == "python":  # the interpreter this command runs in, whatever `python` is on PATH
        argv[0] = sys.executable
    raise typer.Exit(subprocess.run(argv).returncode)


class MetricsError(ValueError):
    """A metrics file that cannot be read or does not have the shape its stage writes."""


_REBUILD = "re-run the stage that writes it (`dvc repro`)"


def _read_metrics(path: Path) -> Any:
    """The JSON content of a metrics file, or a :class:`MetricsError` saying in one line why it cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise MetricsError(f"cannot read {path} ({err.strerror or err}); {_REBUILD}") from None
    except UnicodeDecodeError:
        raise MetricsError(f"{path} is not UTF-8 text; {_REBUILD}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MetricsError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                           f"{_REBUILD}") from None
    except RecursionError:
        raise MetricsError(f"{path} is not valid JSON (nested too deeply); {_REBUILD}") from None


def _per_set(metrics: Any, path: Path, what: str) -> dict[str, float]:
    """{OOD set: AUROC} of one method's metrics, where every mapping entry is one set's metrics (the other entries,
    such as ``method`` or ``feature``, are strings); a set without a numeric AUROC is a :class:`MetricsError`."""
    if not isinstance(metrics, dict):
        raise MetricsError(f"{path}: {what} is a {type(metrics).__name__}, not a mapping of OOD sets; {_REBUILD}")
    aurocs = {}
    for name, entry in metrics.items():
        if not isinstance(entry, dict):
            continue
        auroc = entry.get("AUROC")
        if isinstance(auroc, bool) or not isinstance(auroc, (int, float)):
            raise MetricsError(f"{path}: {what}, set {name!r} has no numeric AUROC; {_REBUILD}")
        aurocs[name] = float(auroc)
    return aurocs


def summary_table(metrics_dir: Path) -> dict[str, dict[str, float]]:
    """{method: {OOD set: AUROC}}: DMR first, then the combined score and the baselines where computed."""
    eval_path = metrics_dir / "eval.json"
    if not eval_path.exists():
        raise MetricsError(f"{eval_path} not found: run `dvc repro` first")
    results = {"DMR": _per_set(_read_metrics(eval_path), eval_path, "DMR's metrics")}
    if not results["DMR"]:
        raise MetricsError(f"{eval_path} holds no per-set metrics; {_REBUILD}")
    combined = metrics_dir / "combined.json"
    if combined.exists():
        payload = _read_metrics(combined)
        method = payload.get("method") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or not isinstance(method, (str, type(None))):
            raise MetricsError(f"{combined} is not a combined score's metrics (a mapping with a method name, or "
                               f"method null); {_REBUILD}")
        if method:
            results[method] = _per_set(payload, combined, method)
    baselines = metrics_dir / "baselines.json"
    if baselines.exists():
        payload = _read_metrics(baselines)
        detectors = payload.get("detectors") if isinstance(payload, dict) else None
        if not isinstance(detectors, dict):
            raise MetricsError(f"{baselines} has no mapping 'detectors' of each detector's metrics; {_REBUILD}")
        results.update({name: _per_set(values, baselines, name) for name, values in detectors.items()})
    return results


@app.command()
def summary(metrics_dir: Path = typer.Option(Path("metrics"))) -> None:
    """Print AUROC per OOD set for DMR (and the baselines and the combined score, if computed)."""
    try:
        results = summary_table(metrics_dir)
    except MetricsError as err:
        _fail(str(err))
    sets = list(results["DMR"])
    typer.echo(f"{'method':<16}" + "".join(f"{s[:12]:>13}" for s in sets))
    for method, values in results.items():
        typer.echo(f"{method[:16]:<16}" + "".join(f"{values[s]:13.2f}" if s in values else f"{'–':>13}"
                                                  for s in sets))


def _trained_detector(with_combined: bool, batch_size: int):
    """The run's detector, its artifacts found through dvc.yaml's stage commands; one line if there is none."""
    from .errors import CheckpointError, DataError
    from .serving.detector import TrainedDetector
    from .serving.run import run_artifacts

    try:
        return TrainedDetector.load(run_artifacts(pipeline_commands()), with_combined=with_combined,
                                    batch_size=batch_size)
    except (DataError, CheckpointError) as err:
        _fail(str(err))


@app.command()
def score(
    inputs: list[Path] = typer.Argument(..., help="image files, folders (searched recursively) and tar archives"),
    out: Path | None = typer.Option(None, "--out", help="write the rows to a .csv or .json file (else a table)"),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="images per forward pass (as stage features)"),
    model: Path | None = typer.Option(None, "--model", help="a file from `dmr export` instead of the run"),
    combined: bool = typer.Option(True, "--combined/--no-combined",
                                  help="also the run's combined score (DMR + its post-hoc detector)"),
) -> None:
    """Score images with the trained detector: per image its predicted class, confidence, DMR score and OOD
    decision (OOD when the score > the run's threshold, which keeps 95 % of ID test images); also the combined
    score when the run has one. Unreadable files are reported and counted, not fatal."""
    from stages._common import os_fault_message

    from .errors import CheckpointError, DataError
    from .serving.export import ExportedDetector
    from .serving.inputs import list_items
    from .serving.scoring import check_output, format_table, score_items, write_report

    try:
        if out is not None:
            check_output(out)
        items = list_items(inputs)
        detector = (ExportedDetector.load(model, batch_size) if model is not None
                    else _trained_detector(combined, batch_size))
    except (DataError, CheckpointError) as err:
        _fail(str(err))
    report = score_items(detector, items, batch_size,
                         on_unreadable=lambda name, why: typer.echo(f"unreadable: {name}: {why}", err=True))
    if out is None:
        typer.echo(format_table(report))
        typer.echo(report.summary_line(), err=True)  # stdout stays the table
        return
    try:
        write_report(report, out)
    except OSError as err:
        _fail(os_fault_message(err) or f"cannot write {out}: {err}")
    typer.echo(f"{report.summary_line()}; rows in {out}")


@app.command("export")
def export_model(out: Path = typer.Argument(..., help="the TorchScript file to write, e.g. model.pt")) -> None:
    """Write the trained classifier, rejection head and threshold as one TorchScript file that plain
    `torch.jit.load` reads: forward(uint8 N×32×32×3 or float N×3×32×32 in [0, 1]) → logits, predicted, confidence,
    dmr_score, is_ood."""
    from stages._common import os_fault_message

    from .serving.export import INPUT_CONTRACT, export_detector

    detector = _trained_detector(with_combined=False, batch_size=500)
    try:
        meta = export_detector(out, detector.classifier, detector.head, detector.feature, detector.threshold,
                               detector.class_names)
    except OSError as err:
        _fail(os_fault_message(err) or f"cannot write {out}: {err}")
    typer.echo(f"wrote {out}: {meta['feature']} head, threshold {meta['threshold']:.6g} (OOD when dmr_score > "
               f"threshold); input {INPUT_CONTRACT}")


if __name__ == "__main__":
    app()
