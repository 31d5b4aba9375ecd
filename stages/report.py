"""Stage report: metrics/report.md + report.csv (every method × every OOD set) and a mean-AUROC bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from dmr_core.artifacts import atomic_output
from dmr_core.params import Params
from dmr_core.plotting import save_bar_chart
from dmr_core.report import DMR_NAME, build_table, collect, paper_tables, render_markdown

from ._common import METRICS, PLOTS, run


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` to build it")
    return json.loads(path.read_text())


def main(params: Params) -> None:
    synth = {v: _read(METRICS / "synth_baselines" / f"{v}.json") for v in params.synth_baselines.variants}
    methods = collect(_read(METRICS / "eval.json"), _read(METRICS / "baselines.json"), synth)
    table = build_table(methods, paper_tables())
    with atomic_output(METRICS / "report.csv") as tmp:
        table.to_csv(tmp, index=False)
    id_test_images = _read(METRICS / "data.json")["cifar10_test"]["images"]
    s = params.synth
    dmr_config = (f"{s.method}, k = {s.k}, λ {s.lambda_dist} [{s.lambda_min}, {s.lambda_max}], {s.num_samples:,} images"
                  + (f", {s.detail} detail on {s.detail_fraction:.0%} of them" if s.detail != "none" else ""))
    markdown = render_markdown(table, list(params.data.ood_sets), _read(METRICS / "classifier.json"), id_test_images,
                               dmr_config)
    with atomic_output(METRICS / "report.md") as tmp:
        tmp.write_text(markdown)
    means = table[table["set"] == "mean"].set_index("method")["auroc"].to_dict()
    save_bar_chart(means, PLOTS / "report" / "mean_auroc.png", "Mean AUROC over the evaluated OOD sets",
                   "AUROC (%)", highlight=(DMR_NAME,))
    print(markdown)


if __name__ == "__main__":
    run(main, "report")
