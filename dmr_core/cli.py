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


@app.command("profiles")
def list_profiles() -> None:
    """List the experiment profiles, one per configuration of the paper's tables: what each reproduces, what it
    needs to be worth running (a GPU, the internet), and a note. Run one with `dmr exp NAME`."""
    import textwrap

    from .profiles.compose import load_profile, profile_names

    for name in profile_names():
        profile = load_profile(name)
        typer.echo(f"{name}  (needs {', '.join(profile.needs) or 'nothing beyond a CPU'})")
        for text in (profile.paper, profile.note):
            typer.echo(textwrap.fill(text, 116, initial_indent="    ", subsequent_indent="    "))


def experiments_on_head() -> set[str]:
    """The names of the DVC experiments whose baseline is the current commit (DVC keeps one name per commit);
    empty outside a git repository, where `dvc exp run` says what is wrong itself."""
    from dvc.repo.experiments.refs import ExpRefInfo

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        return set()
    prefix = str(ExpRefInfo(head.stdout.strip())) + "/"
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", prefix], capture_output=True, text=True,
                          check=False)
    return {ref.removeprefix(prefix) for ref in refs.stdout.split()}


@app.command()
def exp(
    profile: str = typer.Argument(..., help="a profile, e.g. table1_cifar10_wrn40_2 (`dmr profiles` lists them)"),
    set_params: list[str] = typer.Option([], "-S", "--set-param", metavar="KEY=VALUE",
                                         help="a params value over the profile's, as `dvc exp run -S` takes it"),
    queue: bool = typer.Option(False, "--queue", help="queue the experiment (`dvc queue start` runs the queue)"),
    name: str | None = typer.Option(None, "--name", "-n", help="the experiment's name (default: the profile's)"),
    replace: bool = typer.Option(False, "--replace",
                                 help="remove an experiment of that name on this commit first (`dvc exp remove`)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the dvc command(s), run nothing"),
) -> None:
    """Run a profile as a DVC experiment: params.yaml with the profile's values and then the -S values over it,
    validated as every stage validates them (one line on error), then `dvc exp run -n NAME -S key=value ...` (the
    command is printed first). DVC refuses a second experiment of one name on the same commit, so a name already
    taken gets a suffix (NAME-2, …) unless --replace removes the old experiment first."""
    from .device import resolve_device
    from .params import parse_params, read_params_file
    from .profiles.compose import (
        NEEDS,
        apply_overrides,
        changed_overrides,
        compose_overrides,
        exp_run_command,
        free_name,
        load_profile,
        parse_assignment,
    )

    try:
        chosen = load_profile(profile)
        extra = [parse_assignment(text) for text in set_params]
        raw = read_params_file("params.yaml")
        overrides = compose_overrides(chosen, extra)
        parse_params(apply_overrides(raw, overrides))
        command = exp_run_command("-", changed_overrides(raw, overrides), queue)  # the values, checked first
    except ParamsError as err:
        _fail(f"profile {profile}: {err}")
    wanted = name or chosen.name
    commands = []
    if wanted in experiments_on_head():
        if replace:
            commands.append(["dvc", "exp", "remove", wanted])
        else:
            taken = free_name(wanted, experiments_on_head())
            typer.echo(f"an experiment named {wanted!r} exists on this commit; this one is {taken!r} (--replace "
                       "removes the old one instead)")
            wanted = taken
    command[command.index("-n") + 1] = wanted
    commands.append(command)
    for need in chosen.needs:
        typer.echo(f"needs {NEEDS[need]}")
    try:
        device = resolve_device()
    except ValueError as err:  # a DMR_DEVICE the stages would refuse
        _fail(str(err))
    if "gpu" in chosen.needs and device.type != "cuda":
        typer.echo("no GPU is visible here: on the CPU this run takes hours to days")
    for argv in commands:
        typer.echo("$ " + shlex.join(argv))
        if not dry_run and (code := subprocess.run(argv, check=False).returncode) != 0:
            raise typer.Exit(code)


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


def _trained_detector(with_combined: bool, batch_size: int, keep: float = 0.95, decision: str = "auto"):
    """The run's detector, its artifacts found through dvc.yaml's stage commands; one line if there is none."""
    from .errors import CheckpointError, DataError
    from .serving.detector import TrainedDetector
    from .serving.run import run_artifacts

    try:
        return TrainedDetector.load(run_artifacts(pipeline_commands()), with_combined=with_combined,
                                    batch_size=batch_size, keep=keep, decision=decision)
    except (DataError, CheckpointError) as err:
        _fail(str(err))


# a batch is held in memory as images and as the classifier's activations (about 40 KB per 32-px image)
MAX_BATCH = 100_000
KEEP_HELP = "the share of ID test images kept, one of the run's eval.keep_rates (its threshold decides)"
DETECTOR_HELP = ("which detector decides is_ood: dmr, combined, or auto (the one with the higher near-OOD mean "
                 "AUROC in the run)")


@app.command()
def score(
    inputs: list[Path] = typer.Argument(..., help="image files, folders (searched recursively) and tar archives"),
    out: Path | None = typer.Option(None, "--out", help="write the rows to a .csv or .json file (else a table)"),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=MAX_BATCH,
                                   help="images per forward pass (as stage features)"),
    model: Path | None = typer.Option(None, "--model", help="a file from `dmr export` instead of the run"),
    combined: bool = typer.Option(True, "--combined/--no-combined",
                                  help="also the run's combined score (DMR + its post-hoc detector)"),
    detector: str = typer.Option("auto", "--detector", help=DETECTOR_HELP),
    keep: float = typer.Option(0.95, "--keep", min=0.0, max=1.0, help=KEEP_HELP),
) -> None:
    """Score images with the trained detector: per image its predicted class, confidence, the DMR score and, when
    the run has one, the combined score, each with its OOD decision (OOD when the score > the threshold keeping
    --keep of ID test images), and is_ood, the decision of --detector. Unreadable files are reported and counted,
    not fatal."""
    from .runtime.os_faults import os_fault_message

    from .errors import CheckpointError, DataError
    from .serving.export import ExportedDetector
    from .serving.inputs import check_inputs, read_inputs
    from .serving.scoring import check_output, score_stream, sink_for

    try:
        if out is not None:
            check_output(out)
        paths = check_inputs(inputs)
        if model is not None:
            if detector != "auto" or keep != 0.95:
                raise DataError("--detector and --keep are fixed in an exported file (`dmr export --detector "
                                "--keep`); drop them with --model")
            scorer = ExportedDetector.load(model, batch_size)
        else:
            scorer = _trained_detector(combined, batch_size, keep, detector)
    except (DataError, CheckpointError) as err:
        _fail(str(err))
    try:
        # the output is opened (under a temporary name) before the first image is read: an unwritable --out fails
        # now, not after every image is scored
        with sink_for(out, scorer.describe()) as sink:
            counts = score_stream(scorer, read_inputs(paths, scorer.image_size), sink, batch_size,
                                  on_unreadable=lambda name, why: typer.echo(f"unreadable: {name}: {why}", err=True))
    except OSError as err:
        _fail(os_fault_message(err) or f"cannot write {out}: {err}")
    if out is None:
        typer.echo(counts.summary_line(), err=True)  # stdout stays the table
        return
    typer.echo(f"{counts.summary_line()}; rows in {out}")


@app.command("export")
def export_model(
    out: Path = typer.Argument(..., help="the file to write, e.g. detector.pt2, detector.onnx or detector.pt"),
    fmt: str = typer.Option(None, "--format", help="pt2 (torch.export, the default), onnx or torchscript; "
                                                   "default: by the file's suffix, else pt2"),
    combined: bool = typer.Option(True, "--combined/--no-combined",
                                  help="include the run's combined score (DMR + its post-hoc detector)"),
    detector: str = typer.Option("auto", "--detector", help=DETECTOR_HELP),
    keep: float = typer.Option(0.95, "--keep", min=0.0, max=1.0, help=KEEP_HELP),
) -> None:
    """Write the trained classifier, rejection head, the combined score's parts and the thresholds as one file
    that loads with nothing of this project: forward(uint8 N×S×S×3, S the run's image size) → logits, predicted,
    confidence, dmr_score, dmr_is_ood, combined_score, combined_is_ood, is_ood."""
    from .runtime.os_faults import os_fault_message

    from .errors import DataError
    from .serving.export import FORMATS, SUFFIXES, export_detector

    by_suffix = {suffix: name for name, suffix in SUFFIXES.items()}
    chosen = fmt or by_suffix.get(out.suffix.lower(), "pt2")
    if chosen not in FORMATS:
        _fail(f"unknown --format {chosen!r}; choose from {', '.join(FORMATS)}", 2)
    if out.suffix.lower() in by_suffix and by_suffix[out.suffix.lower()] != chosen:
        _fail(f"{out} names a {by_suffix[out.suffix.lower()]} file but --format is {chosen}; name it "
              f"{out.with_suffix(SUFFIXES[chosen])}", 2)
    trained = _trained_detector(combined, 500, keep, detector)
    try:
        graph = trained.export_graph()
        meta = export_detector(out, graph, list(trained.class_names or
                                                [str(i) for i in range(trained.classifier.classifier_head()
                                                                       .out_features)]),
                               chosen, trained.thresholds, trained.describe()["keep"])
    except DataError as err:
        _fail(str(err))
    except OSError as err:
        _fail(os_fault_message(err) or f"cannot write {out}: {err}")
    decided = (f"{meta['combined']['method']} (> {meta['combined']['threshold']:.6g})"
               if meta["decision"] == "combined" else f"the DMR score (> {meta['threshold']:.6g})")
    typer.echo(f"wrote {out} ({chosen}, {out.stat().st_size / 1e6:.1f} MB): is_ood by {decided}, keeping "
               f"{meta['keep']} of ID images [{trained.decision_reason}]; input {meta['input']}")


if __name__ == "__main__":
    app()
