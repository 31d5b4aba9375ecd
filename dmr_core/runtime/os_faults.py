"""The OS faults a user causes and fixes, said in one line: a full or read-only disk, missing permissions, a file
where a folder belongs."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

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
    errno.ENAMETOOLONG: "a name on that path is longer than the file system allows (most take 255 bytes): shorten it",
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


