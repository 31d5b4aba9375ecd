"""Eqs. 4, 6, 7, the class means, fine detail and the whole synthesised set (dmr_core.synthesis)."""

import numpy as np
import pytest

from dmr_core.synthesis.detail import (
    add_detail,
    add_source_detail,
    detail_rows,
    mix_detail,
    reconstruction_residuals,
)
from dmr_core.synthesis.dmr import SynthConfig, synthesize_ood_images
from dmr_core.synthesis.latent_mixing import (
    class_means,
    mean_marginal_norm,
    mix_latents,
    sample_lambdas,
    sample_sources,
    synthesize_latents,
)


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    rng.shuffle(labels)
    latents = rng.normal(size=(len(labels), 6)).astype(np.float32) + labels[:, None] * 3.0
    return latents, labels


def test_class_means_match_per_class_average(toy):
    latents, labels = toy
    means, counts = class_means(latents, labels, 10)
    for c in range(10):
        np.testing.assert_allclose(means[c], latents[labels == c].mean(0), rtol=1e-5)
        assert counts[c] == (labels == c).sum()


def test_class_means_keep_spatial_latent_shape():
    latents = np.arange(4 * 2 * 3 * 3, dtype=np.float32).reshape(4, 2, 3, 3)
    means, _ = class_means(latents, np.array([0, 1, 0, 1]), 2)
    assert means.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(means[0], (latents[0] + latents[2]) / 2)


def test_class_means_reject_empty_class_and_bad_labels(toy):
    latents, labels = toy
    with pytest.raises(ValueError, match="no latents"):
        class_means(latents, labels, 11)
    with pytest.raises(ValueError, match="labels must lie"):
        class_means(latents, labels - 1, 10)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_sources_come_from_k_distinct_classes(toy, k):
    _, labels = toy
    sources = sample_sources(labels, k, 2000, np.random.default_rng(1))
    assert sources.shape == (2000, k)
    source_labels = labels[sources]
    assert all(len(set(row)) == k for row in source_labels)
    # every class is used, roughly uniformly
    counts = np.bincount(source_labels.ravel(), minlength=10)
    assert counts.min() > 0.7 * counts.mean()


def test_sources_reject_k_above_class_count(toy):
    _, labels = toy
    with pytest.raises(ValueError, match="k = 11"):
        sample_sources(labels, 11, 10, np.random.default_rng(0))


def test_lambdas_uniform_in_range_and_choice_two_valued():
    rng = np.random.default_rng(0)
    lam = sample_lambdas(10000, "uniform", 1.0, 3.0, rng)
    assert lam.min() >= 1.0 and lam.max() <= 3.0
    assert abs(lam.mean() - 2.0) < 0.05
    choice = sample_lambdas(10000, "choice", 1.0, 3.0, rng)
    assert set(np.unique(choice)) == {1.0, 3.0}
    assert abs((choice == 3.0).mean() - 0.5) < 0.03
    with pytest.raises(ValueError):
        sample_lambdas(3, "uniform", 3.0, 1.0, rng)


def test_loguniform_lambdas_put_equal_mass_on_each_doubling():
    lam = sample_lambdas(20000, "loguniform", 1.0, 4.0, np.random.default_rng(0))
    assert lam.min() >= 1.0 and lam.max() <= 4.0
    assert abs((lam < 2.0).mean() - 0.5) < 0.02
    assert np.median(lam) == pytest.approx(2.0, rel=0.03)


def test_eq4_mlm_is_plain_average():
    w = np.array([[[1.0, 2.0], [3.0, 6.0]]], dtype=np.float32)  # n=1, k=2, d=2
    mu = np.full_like(w, 100.0)
    np.testing.assert_allclose(mix_latents(w, mu, np.array([3.0]), "mlm"), [[2.0, 4.0]])


def test_eq6_dmr_scales_the_marginal_latent():
    w = np.array([[[1.0, 2.0]]], dtype=np.float32)
    mu = np.array([[[0.5, 4.0]]], dtype=np.float32)
    np.testing.assert_allclose(mix_latents(w, mu, np.array([2.0]), "dmr"), [[1.0, -4.0]])
    with pytest.raises(ValueError, match="k must be 1"):
        mix_latents(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), np.ones(1), "dmr")


def test_eq7_dmr_mlm_mixes_marginals_then_scales():
    w = np.array([[[1.0, 2.0], [3.0, 6.0]]], dtype=np.float32)
    mu = np.array([[[1.0, 0.0], [1.0, 2.0]]], dtype=np.float32)
    # marginals (0, 2), (2, 4) -> mean (1, 3) -> x3
    np.testing.assert_allclose(mix_latents(w, mu, np.array([3.0]), "dmr_mlm"), [[3.0, 9.0]])


def test_normalised_marginals_weigh_the_same_before_mixing():
    w = np.array([[[3.0, 4.0], [0.0, 10.0]]], dtype=np.float32)   # marginals of norm 5 and 10
    mu = np.zeros_like(w)
    # each rescaled to norm 2: (1.2, 1.6) and (0, 2) → mean (0.6, 1.8) → ×3
    np.testing.assert_allclose(mix_latents(w, mu, np.array([3.0]), "dmr_mlm", marginal_norm=2.0), [[1.8, 5.4]],
                               rtol=1e-6)
    # without it the larger marginal dominates the mix
    np.testing.assert_allclose(mix_latents(w, mu, np.array([3.0]), "dmr_mlm"), [[4.5, 21.0]])


def test_normalised_synthesis_gives_every_eq6_sample_the_norm_lambda_times_mean(toy):
    latents, labels = toy
    means, _ = class_means(latents, labels, 10)
    r = mean_marginal_norm(latents, labels, means)
    expected_r = np.linalg.norm(latents - means[labels], axis=1).mean()
    assert r == pytest.approx(expected_r, rel=1e-6)
    mixed, _, lambdas = synthesize_latents(latents, labels, means, method="dmr", k=1, num_samples=40,
                                           lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0, seed=0,
                                           normalise=True)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), lambdas * r, rtol=1e-5)


def test_synthesis_removes_class_means(toy):
    latents, labels = toy
    means, _ = class_means(latents, labels, 10)
    mixed, sources, lambdas = synthesize_latents(
        latents, labels, means, method="dmr_mlm", k=5, num_samples=500, lambda_dist="uniform",
        lambda_min=1.0, lambda_max=3.0, seed=0)
    expected = lambdas[:, None] * (latents[sources] - means[labels[sources]]).mean(1)
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-5)
    # the class offsets (3 * label) are gone: mixed latents are centred near 0, raw mixes are not
    assert abs(mixed.mean()) < 0.3
    raw, _, _ = synthesize_latents(latents, labels, means, method="mlm", k=5, num_samples=500,
                                   lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0, seed=0)
    assert raw.mean() > 5


def test_synthesis_is_deterministic_given_seed(toy):
    latents, labels = toy
    means, _ = class_means(latents, labels, 10)
    kw = dict(method="dmr_mlm", k=3, num_samples=50, lambda_dist="choice", lambda_min=1.0, lambda_max=3.0)
    a = synthesize_latents(latents, labels, means, seed=7, **kw)
    b = synthesize_latents(latents, labels, means, seed=7, **kw)
    c = synthesize_latents(latents, labels, means, seed=8, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def test_residual_restores_the_image_exactly():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    recon = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    residuals = reconstruction_residuals(images, recon)
    assert residuals.dtype == np.int16 and residuals.min() >= -255 and residuals.max() <= 255
    # k = 1: G(E(x)) + r gives x back, so (E, G) with the residual is lossless
    np.testing.assert_array_equal(add_detail(recon, mix_detail(residuals[:, None])), images)


def test_mixed_detail_keeps_the_energy_of_one_residual():
    rng = np.random.default_rng(1)
    residuals = rng.normal(0, 20, (2000, 5, 4, 4, 3)).round().astype(np.int16)
    mixed = mix_detail(residuals)
    assert mixed.shape == (2000, 4, 4, 3)
    np.testing.assert_allclose(mixed[0], residuals[0].astype(np.float32).sum(0) / np.sqrt(5), rtol=1e-6)
    assert abs(mixed.std() / residuals.std() - 1) < 0.02


def test_add_detail_clips_to_uint8():
    decoded = np.array([[250, 5, 100]], dtype=np.uint8)
    out = add_detail(decoded, np.array([[10.0, -10.0, 0.4]], dtype=np.float32))
    np.testing.assert_array_equal(out, [[255, 0, 100]])


def _decode_to_gray(latents: np.ndarray) -> np.ndarray:
    """A stand-in G: each latent's first coordinate as the gray level of a 4×4 image."""
    level = np.clip(np.rint(latents[:, 0] * 10 + 128), 0, 255).astype(np.uint8)
    return np.broadcast_to(level[:, None, None, None], (len(latents), 4, 4, 3)).copy()


def test_synthesised_set_decodes_the_mixed_latents_and_details_only_its_share(toy):
    latents, labels = toy
    means, _ = class_means(latents, labels, 10)
    residuals = np.random.default_rng(2).integers(-20, 21, (len(latents), 4, 4, 3)).astype(np.int16)
    residual_means, _ = class_means(residuals, labels, 10)
    config = SynthConfig(method="dmr_mlm", k=2, lambda_dist="loguniform", lambda_min=1.0, lambda_max=4.0,
                         normalise=False, detail="residual_dmr", detail_fraction=0.3, num_samples=200, batch_size=16,
                         seed=5)
    result = synthesize_ood_images(latents, labels, means, _decode_to_gray, config, residuals, residual_means)
    mixed, sources, lambdas = synthesize_latents(latents, labels, means, method="dmr_mlm", k=2, num_samples=200,
                                                 lambda_dist="loguniform", lambda_min=1.0, lambda_max=4.0, seed=5)
    np.testing.assert_array_equal(result.sources, sources)
    np.testing.assert_array_equal(result.source_labels, labels[sources])
    plain = _decode_to_gray(mixed)
    detailed = detail_rows(200, 0.3, 5)
    untouched = np.setdiff1d(np.arange(200), detailed)
    np.testing.assert_array_equal(result.images[untouched], plain[untouched])
    row = detailed[0]
    detail = mix_latents(residuals[sources[[row]]].astype(np.float32), residual_means[labels[sources[[row]]]],
                         lambdas[[row]], "dmr_mlm")
    np.testing.assert_array_equal(result.images[row], add_detail(plain[[row]], detail)[0])
    assert 0.2 < len(detailed) / 200 < 0.4


def test_without_detail_the_residuals_are_never_read(toy):
    latents, labels = toy

    class Unreadable:
        def __getitem__(self, key):
            raise AssertionError("residuals read though detail is none")

    images = _decode_to_gray(latents[:6])
    out = add_source_detail(images.copy(), "none", Unreadable(), Unreadable(), labels, np.zeros((6, 1), int),
                            np.ones(6, np.float32), "dmr", 1.0, 0, 4)
    np.testing.assert_array_equal(out, images)
