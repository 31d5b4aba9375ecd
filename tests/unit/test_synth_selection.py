"""head.synth_keep: the synthesised images the head trains on, all or those the frozen classifier is most confident
on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import HEAD
from hypothesis import given, settings
from hypothesis import strategies as st

from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.features import extract_features
from dmr_core.synthesis.selection import max_softmax, most_confident
from dmr_core.training.head import train_head_on_images


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 2**31))
def test_max_softmax_is_the_largest_class_probability(n, classes, seed):
    logits = np.random.default_rng(seed).normal(0, 30, (n, classes)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits).double(), dim=1).max(dim=1).values.numpy()
    np.testing.assert_allclose(max_softmax(logits), expected, rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=50), st.floats(0.01, 1.0))
def test_most_confident_keeps_the_top_share_in_order_ties_by_position(values, share):
    confidence = np.array(values, dtype=np.float64)
    kept = most_confident(confidence, share)
    assert len(kept) == max(1, round(share * len(values)))
    assert (np.diff(kept) > 0).all()  # original order
    dropped = np.setdiff1d(np.arange(len(values)), kept)
    if len(dropped):
        assert confidence[kept].min() >= confidence[dropped].max()
        # among equal confidences at the cut, the earlier rows are kept
        cut = confidence[kept].min()
        tied_kept, tied_dropped = kept[confidence[kept] == cut], dropped[confidence[dropped] == cut]
        assert not len(tied_dropped) or tied_kept.max() < tied_dropped.min()
    assert most_confident(confidence, 1.0).tolist() == list(range(len(values)))


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="give a share in"):
        most_confident(np.ones(4), share)


def test_the_head_trains_on_the_images_the_classifier_is_most_confident_on():
    torch.manual_seed(0)
    classifier = build_classifier("resnet20").eval()
    rng = np.random.default_rng(0)
    id_images, synth_images = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (40, 30))
    reps = extract_features(classifier, synth_images)
    expected = most_confident(max_softmax(reps["logits"]), 0.5)
    id_features = extract_features(classifier, id_images)["feature_map"]
    config = HEAD.__class__(**{**HEAD.__dict__, "epochs": 1, "synth_keep": 0.5})
    trained = train_head_on_images(classifier, id_features, synth_images, "feature_map", config)
    np.testing.assert_array_equal(trained.synth_features, reps["feature_map"][expected])
    everything = train_head_on_images(classifier, id_features, synth_images, "feature_map",
                                      HEAD.__class__(**{**HEAD.__dict__, "epochs": 1}))
    assert len(everything.synth_features) == 30
