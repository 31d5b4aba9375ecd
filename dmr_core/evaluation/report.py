"""One comparison table: every method × every OOD set, our numbers beside the paper's where it has one."""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from ..detectors.posthoc import DETECTORS
from ..evaluation.metrics import NEAR_OOD_SETS, SUMMARY_KEYS
from ..synthesis.dmr import SynthConfig
from ..synthesis.variants import VARIANTS

PAPER_SETS = ("svhn", "textures", "lsun_crop", "tinyimagenet_crop", "places365", "gaussian")
DMR_NAME = "DMR (DMR+MLM, eq. 7)"
OE_NAME = "OE (Outlier Exposure)"
COLUMN_TITLES = {"near_mean": "near-OOD mean", "far_mean": "far-OOD mean"}
# our method name -> (the paper's Table 1 row, its Table 3 row), from the detector and synthesis-variant tables
PAPER_ROWS = {
    **{name: (name if spec.in_paper_table1 else None, None) for name, spec in DETECTORS.items()},
    **{v.title: (v.paper_table1_row, v.paper_table3_row) for v in VARIANTS.values()},
    DMR_NAME: ("DMR", "DMR+MLM"),
}


def paper_tables() -> dict:
    return json.loads(resources.files("dmr_core.evaluation").joinpath("reference/paper_tables.json").read_text())


def collect(eval_metrics: dict, baselines: dict, synth_baselines: dict[str, dict],
            combined: dict | None = None, outlier_exposure: dict | None = None) -> dict[str, tuple[str, dict]]:
    """{method: (kind, {set: {metric: value}})} from the metrics files of eval, baselines, combine,
    synth_baseline and outlier_exposure (its row only when it was run)."""
    def per_set(m: dict) -> dict:
        return {k: v for k, v in m.items() if isinstance(v, dict) and "AUROC" in v}

    methods = {name: ("post-hoc", per_set(m)) for name, m in baselines.get("detectors", {}).items()}
    methods[DMR_NAME] = ("synthesis", per_set(eval_metrics))
    if combined and combined.get("method"):  # an extra row, never a replacement for DMR's own
        methods[combined["method"] + " (combined)"] = ("combined", per_set(combined))
    for variant, m in synth_baselines.items():
        methods[VARIANTS[variant].title] = ("synthesis", per_set(m))
    if outlier_exposure and outlier_exposure.get("run"):
        methods[OE_NAME] = ("outlier exposure", per_set(outlier_exposure))
    return methods


# the paper's per-set table (Table 1 for CIFAR-10, Table 4 for CIFAR-100; both WRN-40-2) and its title, per ID set
PAPER_SET_TABLES = {"cifar10": ("table1_cifar10_wrn40_2", "Table 1"),
                    "cifar100": ("table4_cifar100_wrn40_2", "Table 4")}
# the paper's OE numbers (Table 2, its row "OE"), per ID set: CIFAR-100 only
PAPER_OE_TABLES = {"cifar100": ("table2_cifar100_vs_oe", "Table 2")}


def build_table(methods: dict[str, tuple[str, dict]], paper: dict, id_set: str = "cifar10") -> pd.DataFrame:
    """Long table: one row per (method, set) with our AUROC / AUPR-OUT and the paper's, where it has one: from the
    paper's table for this ID set (none for a user's own set)."""
    table1 = paper[PAPER_SET_TABLES[id_set][0]] if id_set in PAPER_SET_TABLES else {}
    if id_set in PAPER_OE_TABLES:  # the OE row's per-set numbers, looked up as Table 1's are
        table1 = {**table1, OE_NAME: paper[PAPER_OE_TABLES[id_set][0]]["OE"]}
    table3 = paper["table3_ablation_mean"]
    rows = []
    for method, (kind, sets) in methods.items():
        t1, t3 = (OE_NAME, None) if method == OE_NAME else PAPER_ROWS.get(method, (None, None))
        for set_name, m in sets.items():
            paper_auroc = paper_aupr = None
            if t1 and set_name in table1.get(t1, {}):
                paper_auroc, paper_aupr = table1[t1][set_name]["auroc"], table1[t1][set_name]["aupr"]
            elif t3 and set_name == "mean" and id_set in table3[t3]:
                paper_auroc, paper_aupr = table3[t3][id_set]["auroc"], table3[t3][id_set]["aupr"]
            rows.append({"method": method, "kind": kind, "set": set_name, "auroc": m["AUROC"],
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


ID_SET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _data_lines(data: dict) -> list[str]:
    """What the run evaluated and from where (the data stage's metrics), and how it compares with the paper."""
    id_set = data.get("id_set", "cifar10")
    evaluated = list(data.get("ood", {}))
    sources = "; ".join(f"{name} from {info.get('source', '?')}" for name, info in data.get("ood", {}).items())
    suite = data.get("ood_suite", {})
    lines = [f"OOD sets ({suite.get('used', 'listed')} suite, data.ood_sets = {suite.get('asked')!r}): {sources}.", ""]
    if id_set in PAPER_SET_TABLES:
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


def render_markdown(table: pd.DataFrame, data: dict, classifier: dict, dmr_config: str = "",
                    outlier_exposure: dict | None = None) -> str:
    """The report: AUROC and AUPR-OUT tables (best per column in bold, paper value in brackets). ``data`` is the
    data stage's metrics: the ID set, the OOD sets evaluated and where each came from; ``outlier_exposure`` the
    outlier_exposure stage's (its row, or the line saying it was not run)."""
    id_set = data.get("id_set", "cifar10")
    present = set(table["set"])
    sets = [s for s in data.get("ood", {}) if s in present] + [k for k in SUMMARY_KEYS if k in present]
    order = (table[table["set"] == "mean"].sort_values("auroc", ascending=False)["method"].tolist())
    paper_note = (
        f"In brackets: the paper's number (WRN-40-2, {PAPER_SET_TABLES[id_set][1]}; for MLM and DMR-single Table 3's "
        "mean) where the paper evaluated the same set. The paper's mean is over its six sets, so it is not the same "
        "average as ours." if id_set in PAPER_SET_TABLES else "The paper has no numbers for this ID set.")
    if id_set in PAPER_OE_TABLES and (table["method"] == OE_NAME).any():
        paper_note += f" For OE: {PAPER_OE_TABLES[id_set][1]} (WRN-40-2)."
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
                  f"{', '.join(near)}; far-OOD: the others. Each mean is unweighted over its sets.", ""]
    for metric, label in (("auroc", "AUROC"), ("aupr_out", "AUPR-OUT")):
        paper_col = "paper_" + metric
        best = {s: table[table["set"] == s][metric].max() for s in sets}
        headings = [COLUMN_TITLES.get(s, s) for s in sets]
        lines += [f"## {label}", "", "| method | kind | " + " | ".join(headings) + " |",
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
    return "\n".join(lines)
