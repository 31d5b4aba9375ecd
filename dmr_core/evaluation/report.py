"""One comparison table: every method × every OOD set, our numbers beside the paper's where it has one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from ..data.encoding import AS_STORED_SUFFIX, as_stored_name
from ..detectors.posthoc import DETECTORS
from ..evaluation.metrics import NEAR_OOD_SETS, SUMMARY_KEYS
from ..synthesis.dmr import SynthConfig
from ..synthesis.latent_mixing import METHODS
from ..synthesis.variants import VARIANTS

PAPER_SETS = ("svhn", "textures", "lsun_crop", "tinyimagenet_crop", "places365", "gaussian")
OE_NAME = "OE (Outlier Exposure)"
COLUMN_TITLES = {"near_mean": "near-OOD mean", "far_mean": "far-OOD mean", "near_far_mean": "near/far average"}
# what the rows are ranked by: near- and far-OOD weigh the same, whatever the number of sets in each group
RANK_BY = ("near_far_mean", "mean")
# the README's block the report stage rewrites with the headline table
README_BLOCK = ("<!-- results:begin -->", "<!-- results:end -->")
OPERATING_POINTS_BLOCK = ("<!-- operating-points:begin -->", "<!-- operating-points:end -->")
# The main pipeline's row, named after what synthesised its training set (synth.method), and the paper's rows it is
# compared with: (its row in the per-set tables and Table 5, its row in Table 3). The paper's Table 1 DMR number is
# what the authors' single-variant run gave and the paper prints the same number as Table 3's DMR+MLM, so both DMR
# variants are compared with it; MLM alone has only Table 3's mean.
DMR_ROWS = {
    "dmr_mlm": ("DMR (DMR+MLM, eq. 7)", "DMR", "DMR+MLM"),
    "dmr": ("DMR (DMR-single, eq. 6)", "DMR", "DMR-single"),
    "mlm": ("DMR (MLM, eq. 4)", None, "MLM"),
}
assert set(DMR_ROWS) == set(METHODS), "every synth.method needs its row in the report"
# the synthesis variants in the paper's Table 2 only (CIFAR-100 against OE), not among the rows of Table 1
TABLE2_ROWS = {"dmr_kirby": "DMR+KIRBY"}
# our method name -> (its row in the paper's per-set tables and Table 5, its Table 3 row), from the detector and
# synthesis-variant tables
PAPER_ROWS = {
    **{name: (name if spec.in_paper_table1 else None, None) for name, spec in DETECTORS.items()},
    **{v.title: (v.paper_table1_row or TABLE2_ROWS.get(key), v.paper_table3_row) for key, v in VARIANTS.items()},
    OE_NAME: ("OE", None),  # Table 2's row (CIFAR-100 only)
}

# Which of the paper's tables hold numbers for an ID set and a classifier: per OOD set for WRN-40-2 (Table 1 for
# CIFAR-10; Table 4 and, for DMR + KIRBY, Table 2 for CIFAR-100), the mean AUROC over its six sets for ResNet-50
# and DenseNet-121 (Table 5, whose WRN-40-2 columns repeat Tables 1 and 4), and the synthesis ablation's means
# for WRN-40-2 (Table 3).
PER_SET_TABLES = {
    ("cifar10", "wrn40_2"): (("table1_cifar10_wrn40_2", "Table 1"),),
    ("cifar100", "wrn40_2"): (("table4_cifar100_wrn40_2", "Table 4"), ("table2_cifar100_vs_oe", "Table 2")),
}
MEAN_AUROC_TABLE = ("table5_mean_auroc_by_arch", "Table 5")
ABLATION_TABLE = ("table3_ablation_mean", "Table 3")
ABLATION_ARCH = "wrn40_2"
ID_SET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
ARCH_TITLES = {"wrn40_2": "WRN-40-2", "resnet50": "ResNet-50", "densenet121": "DenseNet-121"}


def dmr_row_name(method: str) -> str:
    """The report's name of the main pipeline's row for ``synth.method``."""
    return DMR_ROWS[method][0]


@dataclass(frozen=True)
class PaperReference:
    """The paper's numbers for one ID set and one classifier architecture: the keys and titles of its tables with
    a number per OOD set, whether Table 5 has the mean AUROC, and whether Table 3 applies."""

    id_set: str
    arch: str
    per_set: tuple[tuple[str, str], ...]
    mean_auroc: bool
    ablation: bool


def paper_reference(paper: dict, id_set: str, arch: str) -> PaperReference | None:
    """What the paper reports for ``id_set`` (data.id_set) classified by ``arch`` (classifier.arch); None where it
    reports nothing (another ID set, or another architecture: the paper trained WRN-40-2, ResNet-50 and
    DenseNet-121 only)."""
    per_set = PER_SET_TABLES.get((id_set, arch), ())
    mean_auroc = not per_set and any(arch in row.get(id_set, {}) for row in paper[MEAN_AUROC_TABLE[0]].values())
    ablation = arch == ABLATION_ARCH and any(id_set in row for row in paper[ABLATION_TABLE[0]].values())
    if not (per_set or mean_auroc or ablation):
        return None
    return PaperReference(id_set, arch, per_set, mean_auroc, ablation)


def paper_tables() -> dict:
    return json.loads(resources.files("dmr_core.evaluation").joinpath("reference/paper_tables.json").read_text())


def collect(eval_metrics: dict, baselines: dict, synth_baselines: dict[str, dict],
            combined: dict | None = None, method: str = "dmr_mlm",
            outlier_exposure: dict | None = None) -> dict[str, tuple[str, dict]]:
    """{method: (kind, {set: {metric: value}})} from the metrics files of eval, baselines, combine,
    synth_baseline and outlier_exposure (its row only when it was run); the main pipeline's row is named after
    ``method`` (synth.method)."""
    def per_set(m: dict) -> dict:
        return {k: v for k, v in m.items() if isinstance(v, dict) and "AUROC" in v}

    methods = {name: ("post-hoc", per_set(m)) for name, m in baselines.get("detectors", {}).items()}
    methods[dmr_row_name(method)] = ("synthesis", per_set(eval_metrics))
    if combined and combined.get("method"):  # an extra row, never a replacement for DMR's own
        methods[combined["method"] + " (combined)"] = ("combined", per_set(combined))
    for variant, m in synth_baselines.items():
        methods[VARIANTS[variant].title] = ("synthesis", per_set(m))
    if outlier_exposure and outlier_exposure.get("run"):
        methods[OE_NAME] = ("outlier exposure", per_set(outlier_exposure))
    return methods


def _paper_numbers(paper: dict, ref: PaperReference | None, rows: tuple[str | None, str | None],
                   set_name: str) -> tuple[float | None, float | None]:
    """(AUROC, AUPR) the paper gives for one of our rows (its paper rows ``rows``) on one set, or Nones."""
    if ref is None:
        return None, None
    row, ablation_row = rows
    for key, _ in ref.per_set:
        if row and set_name in paper[key].get(row, {}):
            return paper[key][row][set_name]["auroc"], paper[key][row][set_name]["aupr"]
    if set_name != "mean":
        return None, None
    if ref.mean_auroc and row and ref.arch in paper[MEAN_AUROC_TABLE[0]].get(row, {}).get(ref.id_set, {}):
        return paper[MEAN_AUROC_TABLE[0]][row][ref.id_set][ref.arch], None  # Table 5 gives no AUPR
    if ref.ablation and ablation_row and ref.id_set in paper[ABLATION_TABLE[0]].get(ablation_row, {}):
        numbers = paper[ABLATION_TABLE[0]][ablation_row][ref.id_set]
        return numbers["auroc"], numbers["aupr"]
    return None, None


def build_table(methods: dict[str, tuple[str, dict]], paper: dict, id_set: str, arch: str,
                method: str = "dmr_mlm") -> pd.DataFrame:
    """Long table: one row per (method, set) with our AUROC / AUPR-OUT and the paper's, where the paper has a
    table for this ID set and classifier architecture (:func:`paper_reference`); ``method`` is synth.method,
    which says which of the paper's rows the main pipeline's row is compared with."""
    ref = paper_reference(paper, id_set, arch)
    rows_of = {**PAPER_ROWS, dmr_row_name(method): DMR_ROWS[method][1:]}
    rows = []
    for name, (kind, sets) in methods.items():
        for set_name, m in sets.items():
            paper_auroc, paper_aupr = _paper_numbers(paper, ref, rows_of.get(name, (None, None)), set_name)
            rows.append({"method": name, "kind": kind, "set": set_name, "auroc": m["AUROC"],
                         "aupr_out": m["AUPR-OUT"], "fpr95tpr": m["FPR95TPR"],
                         "paper_auroc": paper_auroc, "paper_aupr_out": paper_aupr})
    return pd.DataFrame(rows)


def describe_synthesis(s: SynthConfig) -> str:
    """The DMR row's synthesis settings in words, for the report."""
    return (f"{s.method}, k = {s.k}, λ {s.lambda_dist} [{s.lambda_min}, {s.lambda_max}], {s.num_samples:,} images"
            + (f", {s.detail} detail on {s.detail_fraction:.0%} of them" if s.detail != "none" else ""))


def _cell(value: float, best: bool, paper: float | None) -> str:
    text = f"**{value:.2f}**" if best else f"{value:.2f}"
    return text + (f" ({paper:.2f})" if paper is not None and paper == paper else "")


def _data_lines(data: dict) -> list[str]:
    """What the run evaluated and from where (the data stage's metrics), and how it compares with the paper."""
    id_set = data.get("id_set", "cifar10")
    evaluated = list(data.get("ood", {}))
    sources = "; ".join(f"{name} from {info.get('source', '?')}" for name, info in data.get("ood", {}).items())
    suite = data.get("ood_suite", {})
    lines = [f"OOD sets ({suite.get('used', 'listed')} suite, data.ood_sets = {suite.get('asked')!r}): {sources}.", ""]
    if id_set in ID_SET_TITLES:  # the paper's ID sets: which of its OOD sets this run lacks, whatever the classifier
        not_evaluated = [s for s in PAPER_SETS if s not in evaluated]
        lines += [
            f"Paper sets not evaluated here: {', '.join(not_evaluated) or 'none'} (they are downloaded from the "
            "internet; `data.ood_sets: paper` evaluates them where there is internet). "
            "textures_partial holds 10 of the 47 DTD categories and is not comparable with the paper's Textures; "
            "tinyimagenet_part holds whole Tiny ImageNet validation images (88 classes without those overlapping "
            "CIFAR-10, resized to 32×32), not the paper's random TIN crops.",
            "",
        ]
    return lines


def paper_note_for(paper: dict, id_set: str, arch: str) -> str:
    """The report's sentence on the paper's numbers in brackets: from which table, or why there are none."""
    if id_set not in ID_SET_TITLES:
        return "The paper has no numbers for this ID set."
    ref = paper_reference(paper, id_set, arch)
    title = f"{ID_SET_TITLES[id_set]} with {ARCH_TITLES.get(arch, arch)}"
    if ref is None:
        return (f"No paper table matches {title}: the paper reports WRN-40-2 per OOD set (Tables 1-4) and the mean "
                "AUROC of ResNet-50 and DenseNet-121 (Table 5); `dmr profiles` lists the runs that reproduce them.")
    parts = []
    if ref.per_set:
        parts.append(f"{' and '.join(title for _, title in ref.per_set)} per OOD set where the paper evaluated the "
                     "same set")
    if ref.mean_auroc:
        parts.append(f"{MEAN_AUROC_TABLE[1]}: the mean AUROC only, no AUPR")
    if ref.ablation:
        parts.append(f"{ABLATION_TABLE[1]}'s mean for the MLM and DMR-single rows")
    return (f"In brackets: the paper's number for {title} ({'; '.join(parts)}). The paper's mean is over its six "
            "sets, so it is not the same average as ours.")


def describe_outlier_exposure(outlier_exposure: dict | None) -> list[str]:
    """The report's lines on the OE row: what it was fine-tuned on and how, or why it was not run."""
    if not outlier_exposure:
        return []
    if not outlier_exposure.get("run"):
        return [f"OE: not run ({outlier_exposure.get('reason', 'no outlier set given')})", ""]
    o, m = outlier_exposure.get("outliers", {}), outlier_exposure
    after, before = m.get("test_accuracy", float("nan")), m.get("test_accuracy_before", float("nan"))
    epochs = f"{m.get('epochs')} epoch{'' if m.get('epochs') == 1 else 's'}"
    line = (f"The OE row: a copy of the classifier fine-tuned with Outlier Exposure (Hendrycks et al. 2019, α = "
            f"{m.get('alpha')}, {epochs}) on ID train and {o.get('images', 0):,} outlier images of "
            f"{o.get('name', '?')}, scored by its maximum softmax probability. It trains on real outliers, which "
            f"DMR does not need, and changes the classifier: ID test accuracy {after:.2f}% after fine-tuning "
            f"({before:.2f}% before).")
    return [line, ""]


def _ranked_methods(table: pd.DataFrame, suffix: str = "") -> list[str]:
    """The methods, best first by the near/far average (the mean over sets where a run has no near/far split)."""
    key = next((k + suffix for k in RANK_BY if (table["set"] == k + suffix).any()), None)
    if key is None:
        return list(dict.fromkeys(table["method"]))
    return table[table["set"] == key].sort_values("auroc", ascending=False)["method"].tolist()


def _column_title(set_name: str) -> str:
    base = set_name.removesuffix(AS_STORED_SUFFIX)
    return COLUMN_TITLES.get(base, base)


def _metric_tables(table: pd.DataFrame, sets: list[str], order: list[str], heading: str) -> list[str]:
    lines = []
    for metric, label in (("auroc", "AUROC"), ("aupr_out", "AUPR-OUT")):
        paper_col = "paper_" + metric
        best = {s: table[table["set"] == s][metric].max() for s in sets}
        lines += [f"## {label}{heading}", "", "| method | kind | " + " | ".join(map(_column_title, sets)) + " |",
                  "|---|---|" + "---:|" * len(sets)]
        for method in order:
            sub = table[table["method"] == method].set_index("set")
            cells = []
            for s in sets:
                if s not in sub.index:
                    cells.append("–")
                    continue
                paper = sub.at[s, paper_col]
                cells.append(_cell(sub.at[s, metric], sub.at[s, metric] == best[s], None if pd.isna(paper) else paper))
            lines.append(f"| {method} | {sub['kind'].iloc[0]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def encoding_line(data: dict) -> str:
    """The report's sentence on how the OOD test sets were encoded (the data stage's ``ood_encoding``)."""
    info = data.get("ood_encoding")
    if not info:
        return "OOD sets scored as stored."
    line = (f"ID training files: {info.get('id_train_files')} ({info.get('id_train_share', 0):.0%} of them). OOD test "
            f"sets scored after the ID files' encoding (data.ood_encoding = {info.get('setting')!r}): "
            f"{info.get('applied')}")
    if info.get("as_stored_sets"):
        line += ("; the tables headed *as stored* score the same sets without it (the lossless files), where "
                 "compression artefacts alone separate them from the ID test images")
    return line + "."


def render_markdown(table: pd.DataFrame, data: dict, classifier: dict, dmr_config: str = "",
                    paper: dict | None = None, outlier_exposure: dict | None = None) -> str:
    """The report: AUROC and AUPR-OUT tables (best per column in bold, paper value in brackets), rows ranked by
    the near/far average. ``data`` is the data stage's metrics: the ID set, the OOD sets evaluated, where each
    came from and how they were encoded (sets also scored as stored get tables of their own); ``classifier`` the
    classifier stage's (its arch says which paper table applies); ``paper`` the paper's tables
    (:func:`paper_tables` when None); ``outlier_exposure`` the outlier_exposure stage's (its row, or the line
    saying it was not run)."""
    id_set = data.get("id_set", "cifar10")
    present = set(table["set"])
    sets = [s for s in data.get("ood", {}) if s in present] + [k for k in SUMMARY_KEYS if k in present]
    stored = ([as_stored_name(s) for s in data.get("ood", {}) if as_stored_name(s) in present]
              + [k + AS_STORED_SUFFIX for k in SUMMARY_KEYS if k + AS_STORED_SUFFIX in present])
    paper_note = paper_note_for(paper_tables() if paper is None else paper, id_set, str(classifier.get("arch")))
    lines = [
        "# DMR vs. post-hoc detectors and other OOD-synthesis methods",
        "",
        f"ID: {ID_SET_TITLES.get(id_set, data.get('id_name', id_set))} test ({data.get('id_test', {}).get('images', 0):,} images, "
        f"{data.get('classes', '?')} classes). Classifier: {classifier.get('arch')} "
        f"({classifier.get('test_accuracy', float('nan')):.2f}% test accuracy), frozen; every method scores the same "
        "classifier and the same OOD sets. Higher AUROC / AUPR-OUT is better; OOD is the positive class.",
        f"Best per column in **bold**. {paper_note}",
        "",
        *_data_lines(data),
        encoding_line(data),
        "",
    ]
    if dmr_config:
        lines += [f"The DMR row: {dmr_config}.", ""]
    lines += describe_outlier_exposure(outlier_exposure)
    if (table["kind"] == "combined").any():
        lines += ["Rows of kind *combined* add a post-hoc score to DMR's (each standardised on ID-train scores; "
                  "`combine.detector`). They are reported beside DMR, not instead of it.", ""]
    near = [s for s in sets if s in NEAR_OOD_SETS]
    if "near_mean" in sets:
        lines += [f"Near-OOD sets (natural images close to the ID classes, as OpenOOD v1.5 groups them): "
                  f"{', '.join(near)}; far-OOD: the others. Each mean is unweighted over its sets; the near/far "
                  "average weighs both groups the same, and ranks the rows.", ""]
    lines += _metric_tables(table, sets, _ranked_methods(table), "")
    if stored:
        lines += _metric_tables(table, stored, _ranked_methods(table, AS_STORED_SUFFIX), ", OOD sets as stored")
    return "\n".join(lines)


def headline(table: pd.DataFrame) -> str:
    """The README's results table: each method's AUROC near-OOD, far-OOD, their average and the mean over sets,
    ranked by the average; with the near-OOD mean and the average of the sets as stored where the run scored them
    too."""
    keys = [k for k in SUMMARY_KEYS if (table["set"] == k).any()]
    # of the sets as stored, what the compression cue moves most: near-OOD, and the average ranking the rows
    stored = [k + AS_STORED_SUFFIX for k in ("near_mean", "near_far_mean")
              if (table["set"] == k + AS_STORED_SUFFIX).any()]
    columns = keys + stored
    titles = [_column_title(k) + (" (as stored)" if k.endswith(AS_STORED_SUFFIX) else "") for k in columns]
    lines = ["| method | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(columns)]
    for method in _ranked_methods(table):
        sub = table[table["method"] == method].set_index("set")["auroc"]
        lines.append(f"| {method} | " + " | ".join(f"{sub[k]:.2f}" if k in sub.index else "–" for k in columns) + " |")
    return "\n".join(lines)


def operating_point_table(detectors: dict[str, dict]) -> str:
    """The trade-off a deployer chooses from: per detector (name → its metrics, with ``operating_points`` as the
    eval and combine stages store them) and per share of ID test images kept, the threshold and the share of each
    OOD set that passes it (is judged ID), in %. Empty when no detector stores operating points."""
    rows = {name: m["operating_points"] for name, m in detectors.items() if m.get("operating_points")}
    if not rows:
        return ""
    sets = list(next(iter(rows.values())).values())[0]["passed"]
    lines = ["| detector | ID kept | threshold | " + " | ".join(f"{s} passed" for s in sets) + " |",
             "|---|---:|---:|" + "---:|" * len(sets)]
    for name, points in rows.items():
        for keep, point in sorted(points.items(), key=lambda item: float(item[0])):
            passed = " | ".join(f"{100 * point['passed'][s]:.1f} %" if s in point["passed"] else "–" for s in sets)
            lines.append(f"| {name} | {100 * point['id_kept']:.0f} % | {point['threshold']:.4g} | {passed} |")
    return "\n".join(lines)


def with_block(readme: str, content: str, markers: tuple[str, str]) -> str:
    """``readme`` with the text between ``markers`` replaced by ``content`` (unchanged without the markers)."""
    begin, end = markers
    if begin not in readme or end not in readme:
        return readme
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def with_headline(readme: str, table_markdown: str) -> str:
    """``readme`` with the text between its results markers replaced by ``table_markdown`` (unchanged without
    the markers)."""
    return with_block(readme, table_markdown, README_BLOCK)
