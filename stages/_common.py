"""What every stage shares: its command line (the artifact paths dvc.yaml passes), params.yaml, one error path,
and readers of the artifacts other stages write."""

from __future__ import annotations

import codecs
import contextlib
import errno
import inspect
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer

from dmr_core.data.artifacts import open_zarr
from dmr_core.distributed import (NPROC_ENV, is_main, process_group, relaunch_command, requested_processes,
                                   should_relaunch, threads_per_rank)
from dmr_core.errors import CheckpointError, DataError, NonFiniteLossError, ParamsError
from dmr_core.params import load_params

EXPECTED_ERRORS = (ParamsError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, tarfile.TarError)

# The OS faults a user causes and fixes (permissions, a read-only or full disk, a file where a folder belongs):
# errno → what to do. Any other OSError is a bug or a failing machine, and keeps its traceback.
WHAT_TO_DO = {
    errno.ENOSPC: "free space on its disk (the DVC cache, .dvc/cache, may hold old outputs) and run again",
    errno.EDQUOT: "free space within your disk quota (or ask for a larger one) and run again",
    errno.EFBIG: "the file system cannot hold a file this large: run the project on another disk",
    errno.EROFS: "the file system is read-only: run from a writable copy of the project",
    errno.EACCES: "give your user access to it (or run from a copy of the project you own)",
    errno.EPERM: "give your user access to it (or run from a copy of the project you own)",
    errno.ENOTDIR: "a file stands where a folder is expected on that path: move or remove the file",
    errno.EEXIST: "a file stands where a folder is expected: move or remove the file",
    errno.EISDIR: "a folder stands where a file is expected: move or remove the folder",
}
# errors that only a write can cause
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EEXIST}
# the temporary name ``dmr_core.data.artifacts.atomic_output`` writes an output under: ``.<name>.tmp-<pid>``
TEMPORARY_OUTPUT = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")


def _output_path(filename: str) -> tuple[str, bool]:
    """(the path to name to the user, whether it is an output being written): a path inside an output's
    temporary copy becomes the output itself, which is what dvc.yaml and the user know."""
    parts = list(Path(filename).parts)
    for i, part in enumerate(parts):
        match = TEMPORARY_OUTPUT.match(part)
        if match:
            return str(Path(*parts[:i], match["name"])), True
    return filename, False


def _file_in_the_way(filename: str | None) -> bool:
    """Whether a "file exists" error comes from a file where a folder was to be made (``mkdir(exist_ok=True)``
    raises it then), the one case a user causes; creating something twice is a bug."""
    return filename is not None and os.path.lexists(filename) and not os.path.isdir(filename)


def os_fault_message(err: OSError) -> str | None:
    """One line for an OS fault the user can fix — ``cannot write|read <path>: <strerror>; <what to do>`` — or
    None for any other OSError, which is left to show its traceback.

    Whether it was a read or a write is told by the error (a full or read-only disk, a file in a folder's way),
    by the path (outputs are written under a temporary name first) or, failing those, by whether the path exists:
    an existing path was being read, a missing one created."""
    filename = os.fsdecode(err.filename) if err.filename is not None else None
    if err.errno not in WHAT_TO_DO or (err.errno == errno.EEXIST and not _file_in_the_way(filename)):
        return None
    path, is_output = _output_path(filename) if filename else (None, False)
    writing = err.errno in WRITE_ERRNOS or is_output or filename is None or not os.path.lexists(filename)
    what = path or ("the stage's outputs" if writing else "an input")  # a failed write() on an open file names none
    strerror = err.strerror or os.strerror(err.errno)
    return f"cannot {'write' if writing else 'read'} {what}: {strerror}; {WHAT_TO_DO[err.errno]}"


# what starts a failure report in the stderr of a torchrun run: a rank's one-line error, a Python traceback, or
# the launcher's own error log (its lines start with E and the date: "E1202 05:50:00.123000 ...")
FAILURE_START = re.compile(r"^(?:Traceback|E\d{4} )|error in stage|ChildFailedError")


def forward_until_failure(stream: typing.BinaryIO, out: typing.TextIO) -> tuple[str, str]:
    """Pass what a torchrun run writes to ``stream`` (its stderr: progress bars, warnings) on to ``out`` as it
    comes, piece by piece (a piece ends at a newline or at a progress bar's carriage return), until a piece
    starts a failure report; from there on everything is held back. Returns (all that was read, what was held
    back, a suffix of it), so that the caller can show a failure its own way."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending, seen, held = "", [], []
    while True:
        chunk = stream.read1(1 << 16)  # what has arrived, up to 64 KiB, without waiting for more
        *pieces, pending = re.split(r"(?<=[\r\n])", pending + decoder.decode(chunk, final=not chunk))
        if not chunk:
            pieces.append(pending)
        for piece in filter(None, pieces):
            seen.append(piece)
            if held or FAILURE_START.search(piece):
                held.append(piece)
            else:
                out.write(piece)
                out.flush()
        if not chunk:
            return "".join(seen), "".join(held)


def relaunch(stage: str, module: str, argv: list[str], nproc: int) -> int:
    """Run the stage again in ``nproc`` torchrun workers and return its exit status. The workers' progress passes
    through as it comes (only rank 0 shows any); on a failure, the one-line errors the ranks print are shown once
    each, instead of torchrun's traceback of the launcher."""
    # each worker's OpenMP threads: the cores split between the ranks (torchrun would set 1 and warn)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads_per_rank(nproc)))}
    process = subprocess.Popen(relaunch_command(module, argv, nproc), stderr=subprocess.PIPE, env=env)
    try:
        seen, held = forward_until_failure(process.stderr, sys.stderr)
        returncode = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group; torchrun passes it on): each removes its partial
        # output. Wait for them, reading what they print (a full pipe would block them), then say it once.
        _wait_for_interrupted(process)
        raise
    if returncode == 0:
        sys.stderr.write(held)
        return 0
    shown = seen[:len(seen) - len(held)]
    if shown and not shown.endswith("\n"):
        sys.stderr.write("\n")  # off the line of a progress bar cut short
    lines = seen.splitlines()
    errors = list(dict.fromkeys(line[line.index("error in stage"):] for line in lines if "error in stage" in line))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    sys.stderr.write("\n".join(lines[-40:]) + "\n")
    print(f"error in stage {stage}: a torchrun worker failed (exit {returncode}) with the traceback "
          f"above; run with {NPROC_ENV}=1 to see it alone", file=sys.stderr)
    return returncode or 1


def _wait_for_interrupted(process: subprocess.Popen, grace: float = 60.0) -> None:
    """Let interrupted torchrun workers finish their clean-up (at most ``grace`` seconds, then kill them), however
    often Ctrl-C is pressed meanwhile."""
    deadline = time.monotonic() + grace
    while process.poll() is None:
        try:
            process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except KeyboardInterrupt:
            continue
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def quiet_unless_main():
    """Silence every rank but 0, which prints the stage's summaries and shows its progress once for all; the
    errors of any rank still show (they are printed outside this block)."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def run(main: Callable[..., None], name: str) -> None:
    """``python -m stages.<name> [VARIANT] --<artifact> PATH ...``: validate params.yaml, then call
    ``main(params, **arguments)``; an expected failure ends in one line on stderr and exit code 1.
    With ``DMR_NPROC`` > 1 the stage re-executes itself in that many torchrun workers, which join a process group
    (``dmr_core.distributed``); only rank 0 prints.

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
            nproc = requested_processes()
        except ValueError as err:
            print(f"error in stage {stage}: {err}", file=sys.stderr)
            sys.exit(1)
        if should_relaunch():
            try:
                sys.exit(relaunch(stage, sys.modules[main.__module__].__spec__.name, sys.argv[1:], nproc))
            except KeyboardInterrupt:
                print(f"stage {stage} interrupted; no partial output was kept", file=sys.stderr)
                sys.exit(130)
        try:
            with process_group(), quiet_unless_main():
                main(load_params(), **values)
        except EXPECTED_ERRORS as err:
            print(f"error in stage {stage}: {err}", file=sys.stderr)
            sys.exit(1)
        except OSError as err:
            message = os_fault_message(err)
            if message is None:
                raise
            print(f"error in stage {stage}: {message}", file=sys.stderr)
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
    return datasets / f"id_{split}.zarr"


SETS_INDEX = "sets.json"


def write_sets_index(datasets: Path, class_names: list[str], ood_sets: list[str]) -> None:
    """The data stage's index of what it wrote: the ID classes in label order and the OOD sets in order."""
    (datasets / SETS_INDEX).write_text(json.dumps({"class_names": class_names, "ood_sets": ood_sets}, indent=2))


def read_sets_index(datasets: Path) -> dict:
    """``{"class_names": [...], "ood_sets": [...]}`` as the data stage wrote them."""
    path = datasets / SETS_INDEX
    try:
        index = json.loads(path.read_text())
        if not isinstance(index.get("class_names"), list) or not isinstance(index.get("ood_sets"), list):
            raise ValueError("no class_names / ood_sets lists")
    except FileNotFoundError:
        raise DataError(f"{path} not found: the datasets (stage data) are incomplete or from an older version; run "
                        "`dvc repro data` (or `dvc checkout --force data/datasets`)") from None
    except (ValueError, AttributeError) as err:
        raise DataError(f"{path} is damaged ({err}); run `dvc checkout --force {datasets}` or `dvc repro data`") from None
    return index


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
