"""DMR + post-hoc score combination (dmr_core.detectors.combine)."""

import numpy as np
import pytest

from dmr_core.detectors.combine import combined_scores, standardise


def test_standardise_uses_the_reference_only():
    reference = np.array([1.0, 2.0, 3.0, 4.0])
    out = standardise(np.array([2.5, 2.5 + reference.std()]), reference)
    np.testing.assert_allclose(out, [0.0, 1.0])


def test_combination_is_invariant_to_each_scores_scale():
    rng = np.random.default_rng(0)
    dmr, post = rng.normal(size=50), rng.normal(size=50)
    dmr_ref, post_ref = rng.normal(size=200), rng.normal(size=200)
    base = combined_scores(dmr, post, dmr_ref, post_ref)
    rescaled = combined_scores(10 * dmr + 3, 0.01 * post - 7, 10 * dmr_ref + 3, 0.01 * post_ref - 7)
    np.testing.assert_allclose(base, rescaled, rtol=1e-9, atol=1e-9)


def test_combination_can_beat_both_parts():
    """Two detectors that each see one OOD cue: the sum sees both."""
    rng = np.random.default_rng(1)
    n = 2000
    id_a, id_b = rng.normal(size=n), rng.normal(size=n)
    ood_a = np.concatenate([rng.normal(3, 1, n // 2), rng.normal(size=n // 2)])  # half shifted in a
    ood_b = np.concatenate([rng.normal(size=n // 2), rng.normal(3, 1, n // 2)])  # the other half in b
    from dmr_core.evaluation.metrics import ood_metrics
    auroc_a = ood_metrics(id_a, ood_a)["AUROC"]
    auroc_b = ood_metrics(id_b, ood_b)["AUROC"]
    ref_a, ref_b = rng.normal(size=n), rng.normal(size=n)
    both = ood_metrics(combined_scores(id_a, id_b, ref_a, ref_b), combined_scores(ood_a, ood_b, ref_a, ref_b))["AUROC"]
    assert both > max(auroc_a, auroc_b) + 5


def test_rejects_flat_reference_and_length_mismatch():
    with pytest.raises(ValueError, match="no spread"):
        standardise(np.ones(3), np.ones(5))
    with pytest.raises(ValueError, match="post-hoc"):
        combined_scores(np.ones(3), np.ones(4), np.arange(5.0), np.arange(5.0))


def _loader(n: int, seed: int, label: int | None = None, batch: int = 16):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=generator)
    y = torch.arange(n) % 10 if label is None else torch.full((n,), label)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def test_combined_detector_is_a_pytorch_ood_detector_that_fits_and_predicts_the_formula():
    """fit(loader) fits KNN on the loader and both scales on the loader's ID inputs (OOD-labelled ones ignored);
    predict(x) is the standardised sum; pytorch-ood's OODMetrics takes its scores as any detector's."""
    import torch
    from pytorch_ood.api import Detector, RequiresFittingException
    from pytorch_ood.detector import KNN
    from pytorch_ood.metrics import OODMetrics

    from dmr_core.detectors.combine import CombinedDetector, CombinedScore
    from dmr_core.detectors.dmr import DMRDetector
    from dmr_core.nets.classifier import build_classifier
    from dmr_core.nets.encoder import representation_encoder
    from dmr_core.nets.rejection_head import RejectionHead

    torch.manual_seed(0)
    classifier = build_classifier("resnet20").eval()
    dmr = DMRDetector(RejectionHead(64 * 8 * 8, 8), encoder=representation_encoder(classifier, "feature_map"))
    knn = KNN(representation_encoder(classifier, "penultimate"), k=3).to("cpu")
    detector = CombinedDetector(dmr, knn)
    assert isinstance(detector, Detector) and detector.requires_fit
    test = next(iter(_loader(12, 1, batch=12)))[0]
    with pytest.raises(RequiresFittingException):
        detector.predict(test)

    # OOD-labelled inputs in the fit loader count for neither KNN nor the scales
    train = _loader(40, 0)
    mixed = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([train.dataset, _loader(8, 5, -1).dataset]),
                                        batch_size=16)
    detector.fit(mixed)
    train_x = train.dataset.tensors[0]
    expected = CombinedScore.fit(dmr.predict(train_x).numpy(), knn.predict(train_x).numpy())
    np.testing.assert_allclose(detector.combination.dmr.mean, expected.dmr.mean, rtol=1e-6)
    np.testing.assert_allclose(detector.combination.posthoc.std, expected.posthoc.std, rtol=1e-6)
    scores = detector(test)
    assert scores.shape == (12,) and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected(dmr.predict(test).numpy(), knn.predict(test).numpy()),
                               rtol=1e-6, atol=1e-6)

    ood = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 0.2
    metrics = OODMetrics()
    metrics.update(detector(test), torch.zeros(12, dtype=torch.long))
    metrics.update(detector(ood), -torch.ones(12, dtype=torch.long))
    from dmr_core.evaluation.metrics import evaluate_scores

    ours = evaluate_scores(detector(test).numpy(), {"ood": detector(ood).numpy()})["ood"]
    assert metrics.compute()["AUROC"] * 100 == pytest.approx(ours["AUROC"], abs=1e-3)

    with pytest.raises(ValueError, match="(?i)no ID"):
        CombinedDetector(dmr, knn).fit(_loader(8, 5, -1))
