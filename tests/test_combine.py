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
