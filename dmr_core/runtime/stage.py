"""A stage's command line: ``python -m stages.<name> [VARIANT] --<artifact> PATH ...``, params validated first,
an expected failure ending in one line on stderr."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import tarfile
import typing
from collections.abc import Callable

import typer

from ..distributed import check_process_count, is_main, is_worker, process_group, requested_processes, should_relaunch
from ..errors import CheckpointError, DataError, NonFiniteLossError, ParamsError
from ..params import load_params
from .launcher import die_with_parent, relaunch
from .os_faults import os_fault_message

EXPECTED_ERRORS = (ParamsError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, tarfile.TarError)


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
            if should_relaunch():
                check_process_count(nproc)
        except ValueError as err:
            print(f"error in stage {stage}: {err}", file=sys.stderr)
            sys.exit(1)
        if should_relaunch():
            try:
                sys.exit(relaunch(stage, sys.modules[main.__module__].__spec__.name, sys.argv[1:], nproc))
            except KeyboardInterrupt:
                print(f"stage {stage} interrupted; no partial output was kept", file=sys.stderr)
                sys.exit(130)
        if is_worker():
            die_with_parent()  # a worker whose torchrun is gone (killed, out of memory) stops with it
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


