"""Stage report: every method × every OOD set as markdown and CSV, beside the paper's numbers, and a mean-AUROC
bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from dmr_core.data.artifacts import atomic_output
from dmr_core.evaluation.report import (
    OPERATING_POINTS_BLOCK,
    build_table,
    collect,
    describe_synthesis,
    dmr_row_name,
    headline,
    operating_point_table,
    paper_tables,
    render_markdown,
    with_block,
    with_headline,
)
from dmr_core.params import Params
from dmr_core.plotting import save_bar_chart
from dmr_core.synthesis.dmr import SynthConfig

from dmr_core.runtime.stage import run


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` to build it")
    return json.loads(path.read_text())


def main(params: Params, eval_metrics: Path, baselines: Path, combined: Path, synth_baselines: Path, classifier: Path,
         data: Path, outlier_exposure: Path, out_md: Path, out_csv: Path, plot: Path, readme: Path) -> None:
    synth = {v: _read(synth_baselines / f"{v}.json") for v in params.synth_baselines.variants}
    method, oe = params.synth.method, _read(outlier_exposure)
    eval_metrics, combined_metrics = _read(eval_metrics), _read(combined)
    methods = collect(eval_metrics, _read(baselines), synth, combined_metrics, method, oe)
    data_metrics, classifier_metrics, paper = _read(data), _read(classifier), paper_tables()
    # the paper's table is chosen by the ID set and the classifier's architecture together
    table = build_table(methods, paper, data_metrics.get("id_set", "cifar10"), str(classifier_metrics.get("arch")),
                        method)
    with atomic_output(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    markdown = render_markdown(table, data_metrics, classifier_metrics, describe_synthesis(params.synth.to(SynthConfig)),
                               paper, oe)
    points = operating_point_table({dmr_row_name(method): eval_metrics, combined_metrics.get("method", "combined"):
                                    combined_metrics})
    if points:
        markdown += ("\n## Operating points\n\nThe share of each OOD set judged in-distribution (passed) at each "
                     "share of ID test images kept; `dmr score --keep` picks one.\n\n" + points + "\n")
    with atomic_output(out_md) as tmp:
        tmp.write_text(markdown)
    summary = "near_far_mean" if (table["set"] == "near_far_mean").any() else "mean"
    means = table[table["set"] == summary].set_index("method")["auroc"].to_dict()
    save_bar_chart(means, plot, "AUROC: the average of the near- and far-OOD means" if summary == "near_far_mean"
                   else "Mean AUROC over the evaluated OOD sets", "AUROC (%)", highlight=(dmr_row_name(method),))
    # the README's results block, when the project has one (a copy of the project for a test may not)
    if readme.is_file():
        text = readme.read_text()
        updated = with_block(with_headline(text, headline(table)), points, OPERATING_POINTS_BLOCK)
        if updated != text:
            with atomic_output(readme) as tmp:
                tmp.write_text(updated)
    print(markdown)


if __name__ == "__main__":
    run(main, "report")
