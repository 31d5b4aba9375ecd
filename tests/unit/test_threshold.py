"""The threshold new images are judged by, and what stages eval and combine store for scoring new images."""

import json

import numpy as np
import pytest
import torch
import zarr
from helpers import ROOT
from pytorch_ood.metrics.functional import fpr_at_tpr

from dmr_core.data.artifacts import save_zarr
from dmr_core.detectors.combine import CombinedScore, combined_scores
from dmr_core.detectors.threshold import ID_KEPT, is_ood, ood_threshold
from dmr_core.nets.rejection_head import RejectionHead, save_head
from dmr_core.params import load_params


@pytest.mark.parametrize("n", [1, 20, 30, 101, 1000])
def test_threshold_keeps_at_least_95_percent_of_id_and_no_more_than_ties_force(n):
    scores = np.random.default_rng(n).normal(size=n).astype(np.float32)
    threshold = ood_threshold(scores)
    kept = ~is_ood(scores, threshold)
    assert kept.mean() >= ID_KEPT
    assert threshold in scores  # an ID score itself: float32 comparisons against it are exact
    below = scores[scores < threshold]  # the next lower score would keep fewer than 95 %
    assert not below.size or (scores <= below.max()).mean() < ID_KEPT


def test_threshold_is_where_fpr_at_95_tpr_with_id_positive_stops():
    """pytorch-ood's fpr_at_tpr with ID as the positive class (negated scores) reports the share of OOD kept at
    exactly this threshold."""
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(size=333).astype(np.float32), rng.normal(1, 1, 91).astype(np.float32)
    threshold = ood_threshold(id_scores)
    scores = torch.from_numpy(-np.concatenate([id_scores, ood_scores]))
    labels = torch.cat([-torch.ones(333, dtype=torch.long), torch.zeros(91, dtype=torch.long)])  # ID = "positive"
    assert float(fpr_at_tpr(scores, labels, 0.95)) == pytest.approx((~is_ood(ood_scores, threshold)).mean())


def test_threshold_refuses_empty_or_nonfinite_scores():
    with pytest.raises(ValueError, match="empty or not finite"):
        ood_threshold(np.array([]))
    with pytest.raises(ValueError, match="empty or not finite"):
        ood_threshold(np.array([0.0, np.nan]))


def test_combined_score_from_stored_statistics_equals_the_pipelines():
    rng = np.random.default_rng(1)
    dmr, post, dmr_ref, post_ref = (rng.normal(size=n) for n in (50, 50, 200, 200))
    stored = json.loads(json.dumps(CombinedScore.fit(dmr_ref, post_ref).to_attrs()))  # as zarr attrs keep them
    np.testing.assert_array_equal(CombinedScore.from_attrs(stored)(dmr, post),
                                  combined_scores(dmr, post, dmr_ref, post_ref))


def _features(rng, n_train=60, n=40, d=8):
    part = lambda rows, shift=0.0: {"penultimate": (rng.normal(size=(rows, d)) + shift).astype(np.float32),
                                    "labels": np.arange(rows) % 10}
    return {"id_train": part(n_train), "id_test": part(n), "ood": {"icons": part(n, 2.0)}}


def test_eval_and_combine_store_thresholds_and_what_new_images_need(tmp_path):
    from stages import combine
    from stages import eval as eval_stage

    params = load_params(ROOT / "params.yaml")
    rng = np.random.default_rng(0)
    save_zarr(tmp_path / "features.zarr", _features(rng), attrs={"ood_sets": ["icons"]})
    torch.manual_seed(0)
    save_head(RejectionHead(in_features=8, hidden=16), "penultimate", tmp_path / "head.pt")
    eval_stage.main(params, tmp_path / "head.pt", tmp_path / "features.zarr", tmp_path / "dmr.zarr",
                    tmp_path / "eval.json", tmp_path / "plots")
    dmr = zarr.open_group(str(tmp_path / "dmr.zarr"), mode="r")
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert dmr.attrs["threshold"] == metrics["threshold"] == ood_threshold(dmr["id_test"][:])
    assert "score > threshold" in metrics["threshold_rule"] and metrics["id_kept"] == 0.95

    reference = np.arange(0, 60, 3)
    knn = {"id_test": rng.normal(size=40), "icons": rng.normal(2, 1, 40), "id_train_reference": rng.normal(size=20)}
    save_zarr(tmp_path / "posthoc.zarr", {"reference_indices": reference, "KNN": knn})
    combine.main(params, tmp_path / "dmr.zarr", tmp_path / "posthoc.zarr", tmp_path / "head.pt",
                 tmp_path / "features.zarr", tmp_path / "combined.zarr", tmp_path / "combined.json")
    stored = zarr.open_group(str(tmp_path / "combined.zarr"), mode="r")
    attrs = dict(stored.attrs)
    assert (attrs["detector"], attrs["representation"], attrs["settings"]["knn_k"]) == ("KNN", "penultimate", 50)
    rebuilt = CombinedScore.from_attrs(attrs)(dmr["id_test"][:], knn["id_test"])
    np.testing.assert_array_equal(rebuilt, stored["id_test"][:])
    assert attrs["threshold"] == ood_threshold(rebuilt)
    combined_metrics = json.loads((tmp_path / "combined.json").read_text())
    assert combined_metrics["method"] == "DMR + KNN" and combined_metrics["threshold"] == attrs["threshold"]
    assert set(combined_metrics["icons"]) == {"AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"}
