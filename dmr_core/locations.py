"""Where the project looks for files on this machine: the folders environment variables name
(``DMR_DATA_HOME``, ``DMR_MODEL_HOME``, ``DMR_CACHE``) and checks of a path that never raise."""

from __future__ import annotations

import os
from pathlib import Path


def env_folder(variable: str) -> Path | None:
    """The folder an environment variable names, as an absolute path (None if unset or empty).

    A relative value is resolved against the working directory, which for a stage is the project root (DVC runs
    every stage command there), so ``DMR_DATA_HOME=../shared/data`` means ``shared/data`` beside the project root;
    made absolute once, it cannot change meaning in code that later changes directory.
    """
    value = os.environ.get(variable)
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def cache_dir() -> Path:
    """``$DMR_CACHE`` (default ``~/.cache/dmr-pipeline``), absolute, for downloads and downloaded weights."""
    return env_folder("DMR_CACHE") or Path.home() / ".cache" / "dmr-pipeline"


def is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder; False, not an error, for a value no file system can hold (a name over 255
    bytes), as for one that is not there."""
    try:
        return path.is_dir()
    except OSError:
        return False


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False, not an error, for a name no file system can hold, as for one not there."""
    try:
        return path.is_file()
    except OSError:
        return False
