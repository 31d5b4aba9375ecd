"""The real DVC pipeline on a tiny subset: every stage runs, λ-only changes re-run only what follows."""

import json
from pathlib import Path

import pytest
from helpers import ALL_STAGES, DOWNSTREAM_OF_SYNTH, SYNTH_BASELINES, copy_project, needs_data, run, stages_run

pytestmark = [needs_data, pytest.mark.e2e]


def test_full_pipeline_produces_metrics_and_plots(tiny_project):
    """eval.json holds the metrics of the per-image scores eval keeps, for every OOD set and their mean."""
    import numpy as np
    import zarr

    from dmr_core.evaluation.metrics import METRIC_KEYS, ood_metrics

    metrics = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    scores = zarr.open_group(str(tiny_project / "data" / "dmr_scores.zarr"), mode="r")
    sets = ["textures_partial", "icons", "scenes_crop", "tinyimagenet_part", "gaussian", "gaussian_raw"]
    # the offline cifar10.tar is JPEG quality 75: every OOD set is scored after that encoding, and as stored
    stored = [s + ".as_stored" for s in sets]
    data = json.loads((tiny_project / "metrics" / "data.json").read_text())
    assert data["ood_encoding"]["applied"] == data["ood_encoding"]["id_train_files"] == "JPEG quality 75, 4:2:0"
    assert list(scores.attrs["ood_sets"]) == sets + stored
    summaries = ["near_mean", "far_mean", "near_far_mean", "mean"]
    assert [k for k, v in metrics.items() if isinstance(v, dict)] == (
        sets + stored + summaries + [k + ".as_stored" for k in summaries] + ["operating_points"])
    points = metrics["operating_points"]
    assert list(points) == ["0.9", "0.95", "0.99"] and points["0.95"]["threshold"] == metrics["threshold"]
    assert list(points["0.95"]["passed"]) == sets  # the encoding-matched sets, what a deployed gate meets
    for name in sets + stored:
        assert metrics[name] == ood_metrics(scores["id_test"][:], scores["ood"][name][:]), name
    far = [s for s in sets if s != "tinyimagenet_part"]
    for key in METRIC_KEYS:
        assert metrics["mean"][key] == pytest.approx(np.mean([metrics[s][key] for s in sets]), abs=1e-3)
        assert metrics["far_mean"][key] == pytest.approx(np.mean([metrics[s][key] for s in far]), abs=1e-3)
        assert metrics["near_far_mean"][key] == pytest.approx(
            (metrics["near_mean"][key] + metrics["far_mean"][key]) / 2, abs=1e-3)
        assert metrics["mean.as_stored"][key] == pytest.approx(np.mean([metrics[s][key] for s in stored]), abs=1e-3)
    assert metrics["near_mean"] == metrics["tinyimagenet_part"]
    assert metrics["near_mean.as_stored"] == metrics["tinyimagenet_part.as_stored"]
    # the matched copy differs from the stored one by the ID files' encoding, image for image
    matched = zarr.open_group(str(tiny_project / "data/datasets/ood/icons.zarr"), mode="r")["images"][:]
    as_stored = zarr.open_group(str(tiny_project / "data/datasets/ood/icons.as_stored.zarr"), mode="r")["images"][:]
    assert matched.shape == as_stored.shape and not np.array_equal(matched, as_stored)
    assert np.abs(matched.astype(int) - as_stored).mean() < 20
    # the synthesised training images went through the same encoding
    assert zarr.open_group(str(tiny_project / "data/ood_synth.zarr"), mode="r").attrs["encoding"] == (
        "JPEG quality 75, 4:2:0")
    assert json.loads((tiny_project / "metrics" / "classifier.json").read_text())["test_accuracy"] > 30
    for plot in ("generator/recon.png", "ood_synth/samples.png", "eval/roc.png", "eval/score_histograms.png",
                 "eval/roc/icons.csv", "paper/fig3_k.png", "paper/fig4_lambda.png"):
        assert (tiny_project / "plots" / plot).stat().st_size > 0
    status = run(["dvc", "status"], tiny_project).stdout
    assert "up to date" in status


def test_report_lists_every_method_and_set(tiny_project):
    from dmr_core.detectors.posthoc import DETECTORS

    baselines = json.loads((tiny_project / "metrics" / "baselines.json").read_text())["detectors"]
    assert list(baselines) == list(DETECTORS)
    eval_fields = set(json.loads((tiny_project / "metrics" / "eval.json").read_text())["icons"])
    for name, per_set in baselines.items():
        assert set(per_set["icons"]) == eval_fields, name
    for variant in SYNTH_BASELINES:
        metrics = json.loads((tiny_project / "metrics" / "synth_baselines" / f"{variant}.json").read_text())
        kind = "features" if variant == "feature_dmr" else "images"  # eq. 7 on F's features: no images
        assert metrics[f"synthesised_{kind}"] == (200 if variant == "dmr_kirby" else 100)
        assert (tiny_project / "plots" / "synth_baselines" / f"{variant}.png").stat().st_size > 0
    report = (tiny_project / "metrics" / "report.md").read_text()
    for method in list(baselines) + ["DMR (DMR+MLM, eq. 7)", "MLM (eq. 4)", "DMR-single (eq. 6)", "MIM", "KIRBY",
                                     "DMR + KIRBY", "DMR in F's feature space (eq. 7, no generator)",
                                     "DMR + KNN (combined)"]:
        assert f"| {method} |" in report, method
    assert "Paper sets not evaluated here: svhn, textures, lsun_crop, tinyimagenet_crop, places365" in report
    assert (tiny_project / "plots" / "report" / "mean_auroc.png").stat().st_size > 0
    csv = (tiny_project / "metrics" / "report.csv").read_text().splitlines()
    assert csv[0] == "method,kind,set,auroc,aupr_out,fpr95tpr,paper_auroc,paper_aupr_out"
    methods = len(baselines) + 1 + len(SYNTH_BASELINES) + 1  # post-hoc, DMR, the synthesis variants, combined
    # each method x (6 sets, as scored and as stored, + near, far, their average and the mean of each)
    assert len(csv) == 1 + methods * (2 * 6 + 2 * 4)
    header = ("| method | kind | textures_partial | icons | scenes_crop | tinyimagenet_part | gaussian | gaussian_raw | "
              "near-OOD mean | far-OOD mean | near/far average | mean |")
    assert report.count(header) == 4  # AUROC and AUPR-OUT, of the sets as scored and as stored
    assert "## AUROC, OOD sets as stored" in report
    # the README's results block is the headline of this run, ranked by the near/far average
    readme = (tiny_project / "README.md").read_text()
    block = readme.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "| DMR (DMR+MLM, eq. 7) |" in block and "near/far average (as stored)" in block
    assert len([line for line in block.splitlines() if line.startswith("| ")]) == 1 + methods
    combined = json.loads((tiny_project / "metrics" / "combined.json").read_text())
    assert combined["method"] == "DMR + KNN" and set(combined["icons"]) == eval_fields
    # the operating points block: DMR and the combined score at each keep rate, with the share of icons passing
    points = readme.split("<!-- operating-points:begin -->")[1].split("<!-- operating-points:end -->")[0]
    rows = [line for line in points.splitlines() if line.startswith("| DMR")]
    assert len(rows) == 2 * 3 and "icons passed" in points and "## Operating points" in report
    passed = combined["operating_points"]["0.99"]["passed"]["icons"]
    assert f"| DMR + KNN | 99 % | {combined['operating_points']['0.99']['threshold']:.4g} |" in points
    assert f"{100 * passed:.1f} %" in next(row for row in rows if row.startswith("| DMR + KNN | 99 %"))


def test_lambda_change_reruns_only_synthesis_head_and_eval(tiny_project):
    before = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    result = run(["dvc", "exp", "run", "-S", "synth.lambda_max=2"], tiny_project)
    ran = set(stages_run(result.stdout))
    assert ran == DOWNSTREAM_OF_SYNTH, result.stdout
    skipped = ALL_STAGES - ran
    for stage in skipped:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout
    after = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    assert after != before  # a different synthesised set gives a different head
    diff = run(["dvc", "metrics", "diff"], tiny_project).stdout
    assert "metrics/eval.json" in diff


def test_detail_changes_only_the_chosen_share_of_synthesised_images(tiny_project, tmp_path):
    import numpy as np
    import zarr

    def synthesised(project: Path) -> np.ndarray:
        return np.asarray(zarr.open_group(str(project / "data" / "ood_synth.zarr"), mode="r")["images"][:])

    # in a copy, up to ood_synth only (what a synth key re-runs after it is the λ test's)
    project = copy_project(tiny_project, tmp_path / "detail")
    run(["dvc", "exp", "run", "ood_synth", "-S", "synth.detail=none"], project)
    plain = synthesised(project)
    # a share other than the default's, so that nothing comes from DVC's run cache
    result = run(["dvc", "exp", "run", "ood_synth", "-S", "synth.detail=residual_dmr", "-S",
                  "synth.detail_fraction=0.4"], project)
    assert set(stages_run(result.stdout)) == {"ood_synth"}, result.stdout
    detailed = synthesised(project)
    changed = (detailed != plain).reshape(len(plain), -1).any(1)
    assert 0.25 < changed.mean() < 0.55  # about 40 % of the images got their sources' mixed residual


def test_combine_and_baselines_changes_leave_dmr_alone(tiny_project, tmp_path):
    """The combined row has its own stage: choosing another detector re-runs only it and the report, and the
    generator does not depend on the classifier while the perceptual term is off."""
    result = run(["dvc", "exp", "run", "-S", "combine.detector=ViM"], tiny_project)
    assert set(stages_run(result.stdout)) == {"combine", "report"}, result.stdout
    assert json.loads((tiny_project / "metrics" / "combined.json").read_text())["method"] == "DMR + ViM"
    # up to ood_synth only (what follows it reads the classifier anyway, and re-running it would cost minutes), in
    # a copy, so that later tests see a project whose every stage is up to date
    project = copy_project(tiny_project, tmp_path / "classifier_changed")
    result = run(["dvc", "exp", "run", "ood_synth", "-S", "classifier.lr=0.02"], project)
    ran = set(stages_run(result.stdout))
    assert {"classifier", "perceptual_net"} <= ran and not ran & {"generator", "latents", "class_means", "ood_synth"}, \
        result.stdout


def test_dmr_stage_runs_any_stage_of_the_pipeline(tiny_project):
    """`dmr stage` runs a stage's own dvc.yaml command, foreach instances included."""
    result = run(["dmr", "stage", "synth_baseline@mim"], tiny_project)
    assert "synth baseline mim: mean AUROC" in result.stdout
    unknown = run(["dmr", "stage", "nope"], tiny_project, check=False)
    assert unknown.returncode == 2 and "unknown stage 'nope'" in unknown.stderr and "report" in unknown.stderr


def test_sampled_latent_route_runs_in_the_pipeline(tiny_project, tmp_path):
    """The authors' route: a class-conditional generator, latents w = M(z, c) sampled per class, class means from
    them, and a head trained on their decodings; in a copy of the tiny project, so later tests see the default run."""
    import numpy as np
    import zarr

    project = copy_project(tiny_project, tmp_path / "sampled")
    result = run(["dvc", "exp", "run", "eval", "-S", "generator.kind=cond_style_vae", "-S", "latents.route=sampled",
                  "-S", "latents.samples_per_class=30", "-S", "synth.detail=none"], project)
    ran = set(stages_run(result.stdout))
    assert {"generator", "latents", "class_means", "ood_synth", "rejection_head", "eval"} <= ran, result.stdout
    assert not ran & {"data", "classifier", "features"}, result.stdout
    latents = zarr.open_group(str(project / "data" / "latents.zarr"), mode="r")
    assert latents.attrs["route"] == "sampled" and "residuals" not in latents
    labels = np.asarray(latents["labels"][:])
    assert np.bincount(labels).tolist() == [30] * 10
    means = zarr.open_group(str(project / "data" / "class_means.zarr"), mode="r")
    np.testing.assert_allclose(means["means"][:], [np.asarray(latents["latents"][:])[labels == c].mean(0)
                                                   for c in range(10)], rtol=1e-5, atol=1e-6)
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0 <= metrics["mean"]["AUROC"] <= 100 and "near_mean" in metrics
    assert json.loads((project / "metrics" / "generator.json").read_text())["kind"] == "cond_style_vae"
