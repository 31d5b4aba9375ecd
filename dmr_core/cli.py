"""The ``dmr`` command: run a stage, check params, or show a quick summary of the results."""

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


if __name__ == "__main__":
    app()
