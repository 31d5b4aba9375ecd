"""Where a trained run's artifacts are: read from the pipeline's stage commands, where dvc.yaml writes every path
once, so that a renamed artifact needs no change here.

The caller passes ``{stage name: command}`` (the CLI gets it from DVC); nothing here knows DVC.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class RunArtifacts:
    """The files scoring new images reads; ``combined`` and ``train_set`` are optional extras."""

    classifier: Path        # F (stage features reads it)
    head: Path              # the rejection head B (stage eval)
    dmr_scores: Path        # DMR's scores, with the threshold in their attrs (stage eval)
    features: Path | None   # F's representations, ID-train among them: what the combined score's detector fits on
    combined: Path | None   # the combined score's scales, detector and threshold (stage combine)
    train_set: Path | None  # the ID training images, whose attrs hold the class names (stage classifier)


def command_option(command: str, option: str) -> str | None:
    """The value of ``--option VALUE`` (or ``--option=VALUE``) in a stage command, or None."""
    argv = shlex.split(command)
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def run_artifacts(commands: dict[str, str], root: Path = Path(".")) -> RunArtifacts:
    """The artifacts named by the stage commands of a pipeline rooted at ``root``."""

    def path(stage: str, option: str, required: bool = True) -> Path | None:
        value = command_option(commands.get(stage, ""), option)
        if value is None and required:
            raise DataError(f"the pipeline has no stage {stage!r} with {option}; is this this project's dvc.yaml?")
        return None if value is None else root / value

    return RunArtifacts(classifier=path("features", "--classifier"), head=path("eval", "--head"),
                        dmr_scores=path("eval", "--scores"), features=path("combine", "--features", False),
                        combined=path("combine", "--scores", False), train_set=path("classifier", "--train", False))
