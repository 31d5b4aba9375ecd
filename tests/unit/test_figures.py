"""Figures 3 and 4: every column keeps its sources; only k or λ changes down a column."""

import numpy as np
import pytest

from dmr_core.synthesis.figures import feasible_ks, fixed_sources, k_sweep, lambda_sweep


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    latents = rng.normal(size=(30, 4)).astype(np.float32)
    means = np.stack([latents[labels == c].mean(0) for c in range(6)])
    return latents, labels, means


def test_sources_are_seeded_and_from_distinct_classes(toy):
    _, labels, _ = toy
    sources = fixed_sources(labels, 5, 7, seed=3)
    assert sources.shape == (7, 5)
    assert all(len(set(labels[row])) == 5 for row in sources)
    np.testing.assert_array_equal(sources, fixed_sources(labels, 5, 7, seed=3))
    assert not np.array_equal(sources, fixed_sources(labels, 5, 7, seed=4))


def test_k_rows_mix_the_first_k_sources_of_each_column(toy):
    latents, labels, means = toy
    sources = fixed_sources(labels, 5, 4, seed=0)
    rows = k_sweep(latents, labels, means, [1, 3, 5], 2.0, sources)
    marginal = latents[sources] - means[labels[sources]]
    np.testing.assert_allclose(rows[0], 2.0 * marginal[:, 0], rtol=1e-6)  # k = 1: eq. 6
    np.testing.assert_allclose(rows[1], 2.0 * marginal[:, :3].mean(1), rtol=1e-6)
    np.testing.assert_allclose(rows[2], 2.0 * marginal.mean(1), rtol=1e-6)


def test_lambda_rows_scale_one_mix(toy):
    latents, labels, means = toy
    sources = fixed_sources(labels, 3, 4, seed=0)
    one, three = lambda_sweep(latents, labels, means, [1.0, 3.0], sources)
    np.testing.assert_allclose(three, 3 * one, rtol=1e-6)
    assert not np.allclose(one, 0)


def test_rows_with_more_sources_than_classes_are_left_out():
    assert feasible_ks([1, 2, 3, 4, 5], 3) == [1, 2, 3] and feasible_ks([5], 10) == [5]
