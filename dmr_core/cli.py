"""The ``dmr`` command: run a stage, check params, or show a quick summary of the results."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

from .params import ParamsError, load_params

app = typer.Typer(help="DMR OOD-detection pipeline. The main entry point is `dvc repro`; these are helpers.",
                  no_args_is_help=True)

STAGES = ("data", "classifier", "generator", "latents", "class_means", "ood_synth", "features",
          "rejection_head", "eval")


@app.command()
def check_params(path: Path = typer.Option(Path("params.yaml"), help="params file to validate")) -> None:
    """Validate params.yaml without running anything."""
    try:
        load_params(path)
    except ParamsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")


@app.command()
def stage(name: str = typer.Argument(..., help=f"one of {', '.join(STAGES)}")) -> None:
    """Run one stage outside DVC (normally `dvc repro` does this)."""
    if name not in STAGES:
        typer.echo(f"unknown stage {name!r}; choose from {', '.join(STAGES)}", err=True)
        raise typer.Exit(2)
    module = importlib.import_module(f"stages.{name}")
    from stages._common import run

    run(module.main, name)


@app.command()
def summary(metrics_dir: Path = typer.Option(Path("metrics"))) -> None:
    """Print AUROC per OOD set for DMR (and the baselines, if computed)."""
    eval_path = metrics_dir / "eval.json"
    if not eval_path.is_file():
        typer.echo(f"{eval_path} not found: run `dvc repro` first", err=True)
        raise typer.Exit(1)
    results = {"DMR": json.loads(eval_path.read_text())}
    baselines = metrics_dir / "baselines.json"
    if baselines.is_file():
        results.update(json.loads(baselines.read_text()).get("detectors", {}))
    sets = [k for k, v in results["DMR"].items() if isinstance(v, dict)]
    typer.echo(f"{'method':<16}" + "".join(f"{s[:12]:>13}" for s in sets))
    for method, values in results.items():
        typer.echo(f"{method:<16}" + "".join(f"{values[s]['AUROC']:13.2f}" for s in sets))


if __name__ == "__main__":
    app()
