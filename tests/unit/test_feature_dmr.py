"""The feature-space ablation of DMR (variant feature_dmr): eq. 7 on F's own features, straight into the head."""

import numpy as np
import pytest
import torch
from helpers import HEAD

from dmr_core.synthesis.baseline import save_synthesised_plot, synthesised_count, train_head_on_synthesised
from dmr_core.synthesis.latent_mixing import class_means, sample_lambdas, sample_sources, synthesize_latents
from dmr_core.synthesis.variants import VARIANTS, SynthesisedFeatures, SynthesisSources, VariantConfig


def feature_sources(features: np.ndarray, labels: np.ndarray) -> SynthesisSources:
    """Sources holding only what feature_dmr reads: the labels and F's features of the ID training images."""
    unused = np.zeros((0,))
    return SynthesisSources(labels=labels, images=unused, latents=unused, latent_labels=unused, class_means=unused,
                            decode=None, feature_maps=unused, logits=unused, class_weights=torch.zeros(0), id_features=features)


def config(k: int = 3, num_samples: int = 50, seed: int = 0, **changes) -> VariantConfig:
    return VariantConfig(**{"k": k, "lambda_dist": "uniform", "lambda_min": 1.0, "lambda_max": 3.0,
                            "num_samples": num_samples, "kirby_threshold": 0.3, "saliency_share": 0.3, "seed": seed,
                            **changes})


def post_relu_features(n: int = 60, classes: int = 5, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative N×C×H×W "feature maps", each class around its own pattern (the same in every ``draw``)."""
    patterns = np.random.default_rng(0).uniform(0, 2, size=(classes, 4, 2, 2))
    rng = np.random.default_rng([1, draw])
    labels = np.arange(n) % classes
    features = np.maximum(patterns[labels] + rng.normal(scale=0.5, size=(n, 4, 2, 2)), 0).astype(np.float32)
    return features, labels


def by_hand(features: np.ndarray, labels: np.ndarray, c: VariantConfig) -> np.ndarray:
    """Eq. 7 written out: the class means, then λ_j · (1/k) Σ_i (f_{s_ji} − μ_{y_{s_ji}}) for each sample j, with the
    sources and λ drawn from ``c.seed`` in the order the latent variants draw them."""
    rng = np.random.default_rng(c.seed)
    picked = sample_sources(labels, c.k, c.num_samples, rng)
    lambdas = sample_lambdas(c.num_samples, c.lambda_dist, c.lambda_min, c.lambda_max, rng)
    means = {y: features[labels == y].astype(np.float64).mean(0) for y in np.unique(labels)}
    return np.stack([lam * np.mean([features[i] - means[labels[i]] for i in row], axis=0)
                     for row, lam in zip(picked, lambdas)])


def test_feature_dmr_is_eq7_on_the_features():
    features, labels = post_relu_features()
    c = config(k=3)
    out = VARIANTS["feature_dmr"].synthesise(feature_sources(features, labels), c)
    assert isinstance(out, SynthesisedFeatures) and out.features.shape == (50, 4, 2, 2)
    assert out.features.dtype == features.dtype
    np.testing.assert_allclose(out.features, by_hand(features, labels, c), rtol=1e-5, atol=1e-5)
    # left as the equation gives them: centred marginals of non-negative features are partly negative
    assert (out.features < 0).any()


def test_k1_is_eq6():
    features, labels = post_relu_features()
    c = config(k=1)
    out = VARIANTS["feature_dmr"].synthesise(feature_sources(features, labels), c).features
    rng = np.random.default_rng(c.seed)
    picked = sample_sources(labels, 1, c.num_samples, rng)[:, 0]
    lambdas = sample_lambdas(c.num_samples, "uniform", 1.0, 3.0, rng)
    means = np.stack([features[labels == y].mean(0) for y in range(5)])
    eq6 = lambdas[:, None, None, None] * (features[picked] - means[labels[picked]])  # λ · (f − μ_y)
    np.testing.assert_allclose(out, eq6, rtol=1e-5, atol=1e-5)
    same = synthesize_latents(features, labels, class_means(features, labels, 5)[0], method="dmr", k=1,
                              num_samples=c.num_samples, lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0,
                              seed=c.seed)[0]
    np.testing.assert_array_equal(out, same)


def test_deterministic_given_the_seed_and_float16_kept():
    features, labels = post_relu_features()
    half = features.astype(np.float16)
    synthesise = VARIANTS["feature_dmr"].synthesise
    first = synthesise(feature_sources(half, labels), config(seed=3)).features
    np.testing.assert_array_equal(first, synthesise(feature_sources(half, labels), config(seed=3)).features)
    assert not np.array_equal(first, synthesise(feature_sources(half, labels), config(seed=4)).features)
    assert first.dtype == np.float16  # as F's features of synthesised images would be


def test_mixing_in_batches_changes_nothing():
    features, labels = post_relu_features(n=90)
    means = class_means(features, labels, 5)[0]
    common = {"method": "dmr_mlm", "k": 4, "num_samples": 37, "lambda_dist": "loguniform", "lambda_min": 1.0,
              "lambda_max": 5.0, "seed": 1}
    whole, sources, lambdas = synthesize_latents(features, labels, means, **common)
    batched, sources_b, lambdas_b = synthesize_latents(features, labels, means, batch_size=5, **common)
    np.testing.assert_array_equal(batched, whole)
    np.testing.assert_array_equal(sources_b, sources)
    np.testing.assert_array_equal(lambdas_b, lambdas)


def test_the_head_trained_on_them_separates_id_from_them():
    """On class blobs, B learns ID vs eq. 7 in feature space: held-out ID features score low, a fresh synthesised
    set (another seed) high."""
    features, labels = post_relu_features(n=600)
    held_out, _ = post_relu_features(n=300, draw=1)
    synthesise = VARIANTS["feature_dmr"].synthesise
    train_set = synthesise(feature_sources(features, labels), config(num_samples=600, seed=0))
    trained = train_head_on_synthesised(None, features, train_set, "feature_map", HEAD)  # F is never asked
    assert trained.synth_features is train_set.features and len(trained.history.loss) == HEAD.epochs
    fresh = synthesise(feature_sources(features, labels), config(num_samples=300, seed=1)).features
    with torch.inference_mode():
        id_scores = trained.head(torch.from_numpy(held_out)).numpy()
        ood_scores = trained.head(torch.from_numpy(fresh)).numpy()
    # AUROC: the chance that a synthesised sample outscores a held-out ID one
    auroc = (ood_scores[:, None] > id_scores[None, :]).mean()
    assert auroc > 0.9, auroc


@pytest.mark.parametrize("kind", ["images", "features"])
def test_each_kind_of_set_is_counted_and_pictured(tmp_path, kind):
    features, labels = post_relu_features()
    synthesised = (VARIANTS["feature_dmr"].synthesise(feature_sources(features, labels), config()) if kind == "features"
                   else np.zeros((50, 32, 32, 3), np.uint8))
    assert synthesised_count(synthesised) == {f"synthesised_{kind}": 50}
    save_synthesised_plot(synthesised, features, "feature_map", tmp_path / "plot.png", "x")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
