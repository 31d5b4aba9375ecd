"""The ``dmr`` command: run a stage, check params, or show a quick summary of the results."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from .params import ParamsError, load_params

app = typer.Typer(help="DMR OOD-detection pipeline. The main entry point is `dvc repro`; these are helpers.",
                  no_args_is_help=True)


@app.command()
def check_params(path: Path = typer.Option(Path("params.yaml"), help="params file to validate")) -> None:
    """Validate params.yaml without running anything."""
    try:
        load_params(path)
    except ParamsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1)
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
        raise typer.BadParameter(f"cannot read the pipeline here ({err}); run from the project root") from None


@app.command()
def stage(name: str = typer.Argument(..., help="a stage of dvc.yaml, e.g. eval or synth_baseline@mlm")) -> None:
    """Run one stage's command from dvc.yaml outside DVC's caching (normally `dvc repro` runs it)."""
    commands = pipeline_commands()
    if name not in commands:
        typer.echo(f"unknown stage {name!r}; choose from {', '.join(commands)}", err=True)
        raise typer.Exit(2)
    argv = shlex.split(commands[name])
    if argv[0] == "python":  # the interpreter this command runs in, whatever `python` is on PATH
        argv[0] = sys.executable
    raise typer.Exit(subprocess.run(argv).returncode)


def _per_set(metrics: dict) -> dict[str, dict]:
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and "AUROC" in v}


@app.command()
def summary(metrics_dir: Path = typer.Option(Path("metrics"))) -> None:
    """Print AUROC per OOD set for DMR (and the baselines and the combined score, if computed)."""
    eval_path = metrics_dir / "eval.json"
    if not eval_path.is_file():
        typer.echo(f"{eval_path} not found: run `dvc repro` first", err=True)
        raise typer.Exit(1)
    results = {"DMR": _per_set(json.loads(eval_path.read_text()))}
    combined = metrics_dir / "combined.json"
    if combined.is_file() and (payload := json.loads(combined.read_text())).get("method"):
        results[payload["method"]] = _per_set(payload)
    baselines = metrics_dir / "baselines.json"
    if baselines.is_file():
        results.update({k: _per_set(v) for k, v in json.loads(baselines.read_text()).get("detectors", {}).items()})
    sets = list(results["DMR"])
    typer.echo(f"{'method':<16}" + "".join(f"{s[:12]:>13}" for s in sets))
    for method, values in results.items():
        typer.echo(f"{method[:16]:<16}" + "".join(f"{values[s]['AUROC']:13.2f}" if s in values else f"{'–':>13}"
                                                  for s in sets))


if __name__ == "__main__":
    app()
