"""The rejection head B, its training, and its pytorch-ood detector interface."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import HEAD, blobs
from pytorch_ood.api import FeaturesDetector

from dmr_core.detectors.dmr import DMRDetector, evaluate_head
from dmr_core.evaluation.metrics import evaluate_scores, ood_metrics
from dmr_core.nets.rejection_head import InputDropout, RejectionHead, load_head, save_head
from dmr_core.training.head import train_rejection_head


def test_head_reads_the_flattened_feature_map_as_in_the_paper():
    """Trained on N×C×H×W feature maps, B's first layer takes d = C·H·W inputs (4096 for ResNet-20's 64×8×8) and
    scores a map exactly as its row-major flattening; a hidden ReLU layer leads to one logit."""
    rng = np.random.default_rng(0)
    id_maps = rng.normal(size=(64, 64, 8, 8)).astype(np.float16)
    head, _ = train_rejection_head(id_maps, (id_maps + 1).astype(np.float16), replace(HEAD, epochs=1, hidden=16))
    linear1, relu, linear2 = head.net
    assert (linear1.in_features, linear2.out_features) == (64 * 8 * 8, 1) and isinstance(relu, torch.nn.ReLU)
    maps = torch.from_numpy(id_maps[:5])
    torch.testing.assert_close(head(maps), head(maps.reshape(5, -1)))
    assert head(maps).shape == (5,)


def test_training_reduces_loss_and_separates():
    id_feats, ood_feats = blobs()
    head, history = train_rejection_head(id_feats, ood_feats, HEAD)
    assert history.loss[-1] < 0.5 * history.loss[0]
    # the blobs are separable: the last epoch classifies nearly every training sample right, the first fewer
    assert history.accuracy[-1] > 95 and history.accuracy[0] < history.accuracy[-1]
    scores_id = head(torch.from_numpy(id_feats)).numpy()
    scores_ood = head(torch.from_numpy(ood_feats)).numpy()
    assert ood_metrics(scores_id, scores_ood)["AUROC"] > 95


def test_training_is_deterministic():
    id_feats, ood_feats = blobs()
    a, ha = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2))
    b, hb = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2))
    assert ha == hb
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_detector_is_a_pytorch_ood_features_detector(tmp_path):
    id_feats, ood_feats = blobs()
    head, _ = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2))
    save_head(head, "penultimate", tmp_path / "head.pt")
    loaded, feature, *_ = load_head(tmp_path / "head.pt")
    assert feature == "penultimate"
    detector = DMRDetector(loaded, encoder=lambda x: x.flatten(1))
    assert isinstance(detector, FeaturesDetector)
    z = torch.from_numpy(ood_feats[:10])
    torch.testing.assert_close(detector.predict_features(z), head(z))
    torch.testing.assert_close(detector.predict(z.float().view(10, 4, 4)), head(z.float()))


def test_evaluate_head_scores_every_set_with_the_detector():
    id_feats, ood_feats = blobs()
    head, _ = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2))
    result = evaluate_head(head, id_feats, {"blob": ood_feats, "same": id_feats[::-1].copy()})
    np.testing.assert_array_equal(result.id_scores, DMRDetector(head).scores(id_feats))
    assert result.metrics["blob"]["AUROC"] > 95 and result.metrics["same"]["AUROC"] == pytest.approx(50, abs=1e-6)
    assert list(result.metrics) == ["blob", "same", "mean"]


def test_evaluate_scores_reports_each_set_and_mean():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(size=500)
    results = evaluate_scores(id_scores, {"far": rng.normal(3, 1, 500), "same": rng.normal(size=500)})
    assert results["far"]["AUROC"] > 95
    assert 40 < results["same"]["AUROC"] < 60
    assert results["mean"]["AUROC"] == pytest.approx((results["far"]["AUROC"] + results["same"]["AUROC"]) / 2, abs=1e-3)
    assert set(results["far"]) == {"AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"}


def test_input_dropout_acts_only_while_training():
    head = RejectionHead(64, 16, input_dropout=0.5)
    x = torch.randn(32, 64)
    head.train()
    assert not torch.equal(head(x), head(x))  # a fresh mask per call
    head.eval()
    torch.testing.assert_close(head(x), head.net(x).squeeze(1))  # no dropout, no rescaling at test time


def test_input_dropout_changes_training_and_stays_deterministic():
    id_feats, ood_feats = blobs()
    plain, _ = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2))
    a, _ = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2, input_dropout=0.5))
    b, _ = train_rejection_head(id_feats, ood_feats, replace(HEAD, epochs=2, input_dropout=0.5))
    assert not a.training and not b.training
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(pa, pp) for pa, pp in zip(a.parameters(), plain.parameters()))


def test_head_checkpoint_keeps_input_dropout_and_reads_older_checkpoints(tmp_path):
    head = RejectionHead(16, 8, input_dropout=0.6)
    save_head(head, "feature_map", tmp_path / "new.pt")
    assert load_head(tmp_path / "new.pt")[0].config["input_dropout"] == 0.6
    old = {"feature": "feature_map", "config": {"in_features": 16, "hidden": 8}, "state_dict": head.state_dict()}
    torch.save(old, tmp_path / "old.pt")  # written before the option existed
    loaded, *_ = load_head(tmp_path / "old.pt")
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded(x), head.eval()(x))


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_input_dropout_keeps_one_minus_p_and_rescales(p):
    drop = InputDropout(p, seed=3).train()
    out = drop(torch.ones(400, 1000))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / (1 - p)))
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the expectation


def test_input_dropout_masks_follow_the_seed():
    x = torch.randn(64, 50)
    a, b = InputDropout(0.5, seed=1).train(), InputDropout(0.5, seed=1).train()
    first = a(x)
    torch.testing.assert_close(first, b(x))
    assert not torch.equal(first, a(x))  # the stream moves on
    a.reseed(1)
    torch.testing.assert_close(a(x), first)  # and restarts from the seed
    torch.testing.assert_close(InputDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        InputDropout(1.0)


def test_near_and_far_means_follow_the_openood_grouping():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(size=300)
    ood = {"tinyimagenet_part": rng.normal(0.5, 1, 300), "icons": rng.normal(3, 1, 300), "gaussian": rng.normal(4, 1, 300)}
    results = evaluate_scores(id_scores, ood)
    assert list(results) == ["tinyimagenet_part", "icons", "gaussian", "near_mean", "far_mean", "near_far_mean", "mean"]
    assert results["near_mean"] == results["tinyimagenet_part"]
    assert results["far_mean"]["AUROC"] == pytest.approx((results["icons"]["AUROC"] + results["gaussian"]["AUROC"]) / 2,
                                                         abs=1e-3)
    assert results["near_far_mean"]["AUROC"] == pytest.approx(
        (results["near_mean"]["AUROC"] + results["far_mean"]["AUROC"]) / 2, abs=1e-3)
    assert "near_mean" not in evaluate_scores(id_scores, {"icons": ood["icons"]})  # no near set: the mean alone


def test_predict_on_images_drops_into_pytorch_ood_evaluation():
    """DMRDetector with the classifier's encoder in pytorch-ood's own loop (OODMetrics over a loader of float
    images, ID labelled by class, OOD -1) gives the AUROC of our eval path (extract_features → evaluate_head)."""
    from pytorch_ood.metrics import OODMetrics  # (pytorch_ood.utils in releases before 0.4)
    from torch.utils.data import DataLoader, TensorDataset

    from dmr_core.nets.classifier import build_classifier
    from dmr_core.nets.encoder import representation_encoder
    from dmr_core.nets.features import extract_features

    torch.manual_seed(0)
    classifier = build_classifier("resnet20").eval()
    head = RejectionHead(64 * 8 * 8, 16).eval()
    rng = np.random.default_rng(0)
    id_images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    ood_images = (id_images // 2 + rng.integers(0, 128, (40, 32, 32, 3))).astype(np.uint8)
    x = torch.from_numpy(np.concatenate([id_images, ood_images])).permute(0, 3, 1, 2).float() / 255
    y = torch.cat([torch.arange(40) % 10, -torch.ones(40, dtype=torch.long)])
    detector = DMRDetector(head, encoder=representation_encoder(classifier, "feature_map"))
    metrics = OODMetrics()
    for batch, labels in DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)):
        metrics.update(detector.predict(batch), labels)
    ours = evaluate_head(head, extract_features(classifier, id_images)["feature_map"],
                         {"ood": extract_features(classifier, ood_images)["feature_map"]})
    assert 0 < ours.metrics["ood"]["AUROC"] < 100
    assert metrics.compute()["AUROC"] * 100 == pytest.approx(ours.metrics["ood"]["AUROC"], abs=1e-3)
    # per image, the scores are the eval path's (up to the batch-dependent float rounding of the convolutions)
    np.testing.assert_allclose(detector.predict(x[:40]).numpy(), ours.id_scores, rtol=1e-4, atol=1e-4)
