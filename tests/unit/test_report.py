"""The report's comparison with the paper: the table is chosen by the ID set and the classifier's architecture
together, and the main row is compared with the paper's row of the synthesis method that made its training set."""

from __future__ import annotations

import pytest

from dmr_core.detectors.posthoc import DETECTORS
from dmr_core.evaluation.report import (
    OPERATING_POINTS_BLOCK,
    build_table,
    collect,
    dmr_row_name,
    operating_point_table,
    paper_reference,
    paper_tables,
    render_markdown,
    with_block,
)

PAPER = paper_tables()
SETS = ("svhn", "icons", "mean")


def _metrics(auroc: float) -> dict:
    return {s: {"AUROC": auroc, "AUPR-IN": 1.0, "AUPR-OUT": 2.0, "FPR95TPR": 3.0} for s in SETS}


def _table(id_set: str, arch: str, method: str = "dmr_mlm"):
    baselines = {"detectors": {"MSP": _metrics(80.0), "KNN": _metrics(81.0)}}
    synth = {"kirby": _metrics(82.0), "dmr_kirby": _metrics(83.0), "mlm": _metrics(84.0)}
    methods = collect(_metrics(90.0), baselines, synth, {"method": "DMR + KNN", **_metrics(91.0)}, method)
    return build_table(methods, PAPER, id_set, arch, method).set_index(["method", "set"])


def _paper(table, method: str, set_name: str) -> tuple:
    row = table.loc[(method, set_name)]
    return (None if row.paper_auroc != row.paper_auroc else row.paper_auroc,
            None if row.paper_aupr_out != row.paper_aupr_out else row.paper_aupr_out)


def test_the_table_follows_the_id_set_and_the_architecture():
    assert [t for _, t in paper_reference(PAPER, "cifar10", "wrn40_2").per_set] == ["Table 1"]
    assert [t for _, t in paper_reference(PAPER, "cifar100", "wrn40_2").per_set] == ["Table 4", "Table 2"]
    for id_set in ("cifar10", "cifar100"):
        for arch in ("resnet50", "densenet121"):
            ref = paper_reference(PAPER, id_set, arch)
            assert (ref.per_set, ref.mean_auroc, ref.ablation) == ((), True, False)
        assert paper_reference(PAPER, id_set, "wrn40_2").ablation
    for id_set, arch in (("cifar10", "resnet20"), ("cifar100", "resnet56"), ("cifar10", "torchvision:resnet18"),
                         ("my_pets", "wrn40_2")):
        assert paper_reference(PAPER, id_set, arch) is None


def test_wrn40_2_on_cifar10_reads_table1_per_set_and_table3_for_the_ablation_rows():
    table1 = PAPER["table1_cifar10_wrn40_2"]
    table = _table("cifar10", "wrn40_2")
    assert _paper(table, "MSP", "svhn") == (table1["MSP"]["svhn"]["auroc"], table1["MSP"]["svhn"]["aupr"])
    assert _paper(table, "MSP", "icons") == (None, None) and _paper(table, "KNN", "mean") == (None, None)
    assert _paper(table, "DMR (DMR+MLM, eq. 7)", "mean")[0] == table1["DMR"]["mean"]["auroc"]
    assert _paper(table, "MLM (eq. 4)", "mean") == (PAPER["table3_ablation_mean"]["MLM"]["cifar10"]["auroc"],
                                                    PAPER["table3_ablation_mean"]["MLM"]["cifar10"]["aupr"])
    assert _paper(table, "DMR + KIRBY", "svhn") == (None, None)  # Table 2 is CIFAR-100's
    # the main row is named and compared by synth.method: MLM alone has Table 3's mean only
    mlm = _table("cifar10", "wrn40_2", "mlm")
    assert dmr_row_name("mlm") == "DMR (MLM, eq. 4)"
    assert _paper(mlm, "DMR (MLM, eq. 4)", "svhn") == (None, None)
    assert _paper(mlm, "DMR (MLM, eq. 4)", "mean")[0] == PAPER["table3_ablation_mean"]["MLM"]["cifar10"]["auroc"]
    single = _table("cifar10", "wrn40_2", "dmr")
    assert _paper(single, "DMR (DMR-single, eq. 6)", "svhn")[0] == table1["DMR"]["svhn"]["auroc"]


def test_wrn40_2_on_cifar100_reads_table4_and_table2_for_dmr_kirby():
    table = _table("cifar100", "wrn40_2")
    table4, table2 = PAPER["table4_cifar100_wrn40_2"], PAPER["table2_cifar100_vs_oe"]
    assert _paper(table, "MSP", "svhn")[0] == table4["MSP"]["svhn"]["auroc"]
    assert _paper(table, "KIRBY", "svhn")[0] == table4["KIRBY"]["svhn"]["auroc"]
    assert _paper(table, "DMR + KIRBY", "svhn") == (table2["DMR+KIRBY"]["svhn"]["auroc"],
                                                    table2["DMR+KIRBY"]["svhn"]["aupr"])


@pytest.mark.parametrize("id_set", ["cifar10", "cifar100"])
@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_resnet50_and_densenet121_get_table5s_mean_auroc_only(id_set, arch):
    table5 = PAPER["table5_mean_auroc_by_arch"]
    table = _table(id_set, arch, "dmr")
    assert _paper(table, "MSP", "mean") == (table5["MSP"][id_set][arch], None)
    assert _paper(table, "KIRBY", "mean") == (table5["KIRBY"][id_set][arch], None)
    assert _paper(table, "DMR (DMR-single, eq. 6)", "mean") == (table5["DMR"][id_set][arch], None)
    assert _paper(table, "MSP", "svhn") == (None, None) and _paper(table, "MLM (eq. 4)", "mean") == (None, None)
    assert _paper(table, "KNN", "mean") == (None, None) and "KNN" in DETECTORS


def test_an_architecture_the_paper_did_not_train_gets_no_paper_numbers_and_the_report_says_why():
    table = _table("cifar10", "resnet20")
    assert table["paper_auroc"].isna().all() and table["paper_aupr_out"].isna().all()
    data = {"id_set": "cifar10", "ood": {"svhn": {"source": "download (svhn)"}, "icons": {"source": "x"}},
            "id_test": {"images": 10}, "classes": 10}
    flat = table.reset_index()
    report = render_markdown(flat, data, {"arch": "resnet20", "test_accuracy": 90.0}, paper=PAPER)
    assert "No paper table matches CIFAR-10 with resnet20: the paper reports WRN-40-2 per OOD set" in report
    assert "Paper sets not evaluated here: textures, lsun_crop" in report  # still said for a paper ID set
    resnet50 = render_markdown(_table("cifar10", "resnet50").reset_index(), data,
                               {"arch": "resnet50", "test_accuracy": 90.0}, paper=PAPER)
    assert "In brackets: the paper's number for CIFAR-10 with ResNet-50 (Table 5: the mean AUROC only" in resnet50
    assert f"| MSP | post-hoc | 80.00 | 80.00 | 80.00 ({PAPER['table5_mean_auroc_by_arch']['MSP']['cifar10']['resnet50']:.2f}) |" \
        in resnet50
    own = render_markdown(_table("my_pets", "wrn40_2").reset_index(), {**data, "id_set": "my_pets"},
                          {"arch": "wrn40_2", "test_accuracy": 90.0}, paper=PAPER)
    assert "The paper has no numbers for this ID set." in own and "Paper sets not evaluated" not in own


def test_the_operating_point_table_lists_each_detector_and_keep_rate_with_the_share_passing():
    point = lambda keep, threshold, icons: {"threshold": threshold, "id_kept": keep,  # noqa: E731
                                            "passed": {"icons": icons, "gaussian": 0.0}}
    dmr = {"operating_points": {"0.99": point(0.99, 4.0, 0.66), "0.9": point(0.9, 2.5, 0.2436)}}
    combined = {"operating_points": {"0.95": point(0.95, -2.27348, 0.4669)}}
    table = operating_point_table({"DMR": dmr, "DMR + KNN": combined, "MSP": {"icons": {}}})
    lines = table.splitlines()
    assert lines[0] == "| detector | ID kept | threshold | icons passed | gaussian passed |"
    # rows in order of the share kept, per detector; a detector without operating points has no row
    assert lines[2:] == ["| DMR | 90 % | 2.5 | 24.4 % | 0.0 % |", "| DMR | 99 % | 4 | 66.0 % | 0.0 % |",
                         "| DMR + KNN | 95 % | -2.273 | 46.7 % | 0.0 % |"]
    assert operating_point_table({"MSP": {}}) == ""
    readme = "intro\n<!-- operating-points:begin -->\nold\n<!-- operating-points:end -->\nrest"
    assert with_block(readme, table, OPERATING_POINTS_BLOCK) == (
        f"intro\n<!-- operating-points:begin -->\n{table}\n<!-- operating-points:end -->\nrest")
    assert with_block("no markers", table, OPERATING_POINTS_BLOCK) == "no markers"
