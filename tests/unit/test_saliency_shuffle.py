"""saliency_shuffle (ASCOOD's outliers): the true class's input gradient, and its most salient pixels permuted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmr_core.nets.classifier import build_classifier
from dmr_core.synthesis.saliency_shuffle import input_saliency, shuffle_salient_pixels


def test_saliency_is_the_true_class_logits_input_gradient_per_image():
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 3, 3, 9, 1])
    saliency = input_saliency(model, images, labels, batch_size=2)  # batches split mid-set: per image all the same
    for i in range(5):
        x = torch.from_numpy(images[i:i + 1]).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
        model(x)[0, labels[i]].backward()
        # the batch size changes the rounding only
        np.testing.assert_allclose(saliency[i], x.grad.abs().sum(1)[0].numpy(), rtol=1e-4, atol=1e-6)
    assert saliency.shape == (5, 32, 32) and (saliency >= 0).all()


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_only_the_marked_pixels_move_and_they_are_a_permutation_of_themselves(share, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    saliency = rng.random((3, 8, 8)).astype(np.float32)
    out = shuffle_salient_pixels(images, saliency, share, np.random.default_rng(1))
    marked = max(2, round(share * 64))
    for i in range(3):
        top = np.argsort(-saliency[i].ravel(), kind="stable")[:marked]
        rest = np.setdiff1d(np.arange(64), top)
        before, after = images[i].reshape(64, 3), out[i].reshape(64, 3)
        np.testing.assert_array_equal(after[rest], before[rest])  # unmarked pixels stay
        # the marked pixels hold the same colours, each pixel whole (its three channels move together)
        assert sorted(map(tuple, after[top])) == sorted(map(tuple, before[top]))
    again = shuffle_salient_pixels(images, saliency, share, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)  # the same draws, the same outliers


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="give a share of pixels"):
        shuffle_salient_pixels(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4)), share, np.random.default_rng())
