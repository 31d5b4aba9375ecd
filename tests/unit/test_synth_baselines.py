"""The other OOD-synthesis methods of the variant table produce what they promise from a tiny dataset."""

import numpy as np
import torch

from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.features import extract_features
from dmr_core.synthesis.kirby import class_activation_maps, erase_and_inpaint
from dmr_core.synthesis.latent_mixing import class_means, sample_sources, synthesize_latents
from dmr_core.synthesis.mim import pixel_mixup
from dmr_core.synthesis.variants import VARIANTS, SynthesisedFeatures, SynthesisSources, VariantConfig


def tiny_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    return images, labels


def test_mim_is_pixel_average_of_distinct_class_images():
    images, labels = tiny_images()
    sources = sample_sources(labels, 3, 25, np.random.default_rng(0))
    mixed = pixel_mixup(images, sources)
    assert mixed.shape == (25, 32, 32, 3) and mixed.dtype == np.uint8
    expected = np.rint(images[sources].astype(np.float32).mean(1))
    np.testing.assert_array_equal(mixed, expected.astype(np.uint8))
    assert all(len(set(labels[row])) == 3 for row in sources)


def test_cam_is_normalised_and_upsampled():
    fmaps = torch.rand(4, 64, 8, 8)
    weight = torch.randn(10, 64)
    cams = class_activation_maps(fmaps, weight, torch.tensor([0, 3, 3, 9]))
    assert cams.shape == (4, 32, 32)
    assert cams.min() >= -1e-6 and cams.max() <= 1 + 1e-6
    # the CAM of class y is the weighted channel sum for y
    manual = (weight[3][:, None, None] * fmaps[1]).sum(0)
    up = torch.nn.functional.interpolate(((manual - manual.min()) / (manual.max() - manual.min()))[None, None],
                                         size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(cams[1], up)


def test_kirby_erases_only_the_masked_region():
    images, _ = tiny_images(6)
    cams = np.zeros((6, 32, 32), np.float32)
    cams[:, 8:20, 8:20] = 1.0
    out = erase_and_inpaint(images, cams, threshold=0.3)
    assert out.shape == images.shape and out.dtype == np.uint8
    outside = np.ones((32, 32), bool)
    outside[8:20, 8:20] = False
    np.testing.assert_array_equal(out[:, outside], images[:, outside])
    assert (out[:, 8:20, 8:20] != images[:, 8:20, 8:20]).any()


def test_kirby_from_a_real_classifier_cam():
    images, _ = tiny_images(8)
    model = build_classifier("resnet20").eval()
    feats = extract_features(model, images, batch_size=4)
    fmaps = torch.from_numpy(feats["feature_map"]).float()
    cams = class_activation_maps(fmaps, model.classifier_head().weight.detach(),
                                 torch.from_numpy(feats["logits"]).argmax(1)).numpy()
    out = erase_and_inpaint(images, cams, 0.3)
    assert out.shape == (8, 32, 32, 3)
    changed = (out != images).any(-1).mean()
    assert 0.0 < changed < 1.0


def test_every_variant_synthesises_from_the_same_sources():
    images, labels = tiny_images(60)
    model = build_classifier("resnet20").eval()
    feats = extract_features(model, images, batch_size=30)
    latents = np.random.default_rng(1).normal(size=(60, 6)).astype(np.float32)
    decoded = []

    def decode(mixed):
        decoded.append(mixed)
        return np.zeros((len(mixed), 32, 32, 3), np.uint8)

    sources = SynthesisSources(labels=labels, images=images, latents=latents, latent_labels=labels,
                               class_means=class_means(latents, labels, 10)[0], decode=decode,
                               feature_maps=feats["feature_map"], logits=feats["logits"],
                               class_weights=model.classifier_head().weight.detach(),
                               id_features=feats["feature_map"], classifier=model)
    config = VariantConfig(k=3, lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0, num_samples=20,
                           kirby_threshold=0.3, saliency_share=0.3, seed=0)
    made = {name: variant.synthesise(sources, config) for name, variant in VARIANTS.items()}
    assert {name: len(out) for name, out in made.items()} == {"mlm": 20, "dmr": 20, "mim": 20, "kirby": 20,
                                                               "dmr_kirby": 40, "feature_dmr": 20,
                                                               "saliency_shuffle": 20}
    features = made.pop("feature_dmr")
    assert isinstance(features, SynthesisedFeatures)
    assert features.features.shape[1:] == feats["feature_map"].shape[1:] and features.features.dtype == np.float16
    assert all(out.dtype == np.uint8 and out.shape[1:] == (32, 32, 3) for out in made.values())
    np.testing.assert_array_equal(made["dmr_kirby"][20:], made["kirby"])  # the union holds the KIRBY set as is
    # ASCOOD's outliers are the chosen ID images with their pixels moved, never new colours
    chosen = np.sort(np.random.default_rng(0).permutation(60)[:20])
    for outlier, image in zip(made["saliency_shuffle"], images[chosen]):
        assert sorted(map(tuple, outlier.reshape(-1, 3))) == sorted(map(tuple, image.reshape(-1, 3)))
        assert (outlier != image).any()
    # the latent variants decode eq. 4 (k = 3) and eq. 6 (k = 1) with these settings
    means = class_means(latents, labels, 10)[0]
    common = dict(num_samples=20, lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0, seed=0)
    mlm = synthesize_latents(latents, labels, means, method="mlm", k=3, **common)[0]
    np.testing.assert_array_equal(decoded[0], mlm)
    dmr = synthesize_latents(latents, labels, means, method="dmr", k=1, **common)[0]
    np.testing.assert_array_equal(decoded[1], dmr)
    assert len({v.title for v in VARIANTS.values()}) == len(VARIANTS)
