"""Stage perceptual_net: what the generator's perceptual term measures through (the classifier checkpoint when
``generator.perceptual_weight`` > 0, else a marker that does not change with the classifier)."""

from __future__ import annotations

from pathlib import Path

from dmr_core.data.artifacts import atomic_output
from dmr_core.params import Params
from dmr_core.training.perceptual import write_perceptual_net

from dmr_core.runtime.stage import run


def main(params: Params, classifier: Path, out: Path) -> None:
    with atomic_output(out) as tmp:
        write_perceptual_net(classifier, params.generator.perceptual_weight, tmp)


if __name__ == "__main__":
    run(main, "perceptual_net")
