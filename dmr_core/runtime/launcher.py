"""Relaunch of a stage in ``DMR_NPROC`` torchrun workers: their progress passed through as it comes, their
failures said once in one line, Ctrl-C waited out."""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
import typing

from ..distributed import NPROC_ENV, relaunch_command, threads_per_rank

# what starts a failure report in the stderr of a torchrun run: a rank's one-line error, a Python traceback, or
# the launcher's own error log (its lines start with E and the date: "E1202 05:50:00.123000 ...")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
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
    # torchrun gets SIGTERM when this process ends, however it ends (a kill, the OOM killer): it then stops its
    # workers, so none runs on orphaned
    process = subprocess.Popen(relaunch_command(module, argv, nproc), stderr=subprocess.PIPE, env=env,
                               preexec_fn=lambda: die_with_parent(signal.SIGTERM))
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
    if returncode < 0:
        print(f"error in stage {stage}: torchrun was killed ({signal.Signals(-returncode).name}, most often by the "
              f"kernel's out-of-memory killer) and its workers stopped with it; run with a lower {NPROC_ENV}",
              file=sys.stderr)
        return 1
    if "SIGKILL" in seen:
        print(f"error in stage {stage}: a torchrun worker was killed (SIGKILL, most often by the kernel's "
              f"out-of-memory killer) and the others were stopped; run with a lower {NPROC_ENV}", file=sys.stderr)
        return returncode or 1
    print(f"error in stage {stage}: a torchrun worker failed (exit {returncode}) with the traceback "
          f"above; run with {NPROC_ENV}=1 to see it alone", file=sys.stderr)
    return returncode or 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Have the kernel send this process ``signum`` when its parent ends (Linux ``PR_SET_PDEATHSIG``; elsewhere a
    no-op), and end now if the parent is already gone, so that a worker never outlives the process that started
    it. Called in a torchrun worker and, for torchrun itself, between fork and exec."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() == 1:  # the parent ended before the request was made
        os.kill(os.getpid(), signum)


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


