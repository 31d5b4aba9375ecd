"""The two routes to DMR's latents — encoded w = E(x) and sampled w = M(z, c) from a class-conditional generator —
and a user's pretrained generator plugged in through an entry point."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dmr_core.errors import CheckpointError
from dmr_core.nets.external_generator import load_external_generator, probe_fingerprint
from dmr_core.nets.generator import (
    ConditionalStyleVAE,
    build_generator,
    decode_to_images,
    load_generator,
    sample_class_latents,
    save_generator,
)
from dmr_core.params import ParamsError, parse_params
from dmr_core.synthesis.latent_mixing import class_means, synthesize_latents
from dmr_core.synthesis.latent_routes import draw_latents, samples_per_class
from dmr_core.training.generator import GeneratorTrainingConfig, prepare_generator, train_generator
from helpers import importable_module, params_with

TRAIN = GeneratorTrainingConfig(epochs=2, batch_size=16, lr=0.002, beta_kl=0.1, seed=0)


def tiny_conditional(num_classes: int = 3, seed: int = 0) -> ConditionalStyleVAE:
    torch.manual_seed(seed)
    return build_generator("cond_style_vae", latent_dim=16, base_channels=8, num_classes=num_classes).eval()


def coloured_images(per_class: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of noisy single-colour images (red, green, blue)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    images = rng.integers(0, 60, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    images[np.arange(len(labels)), :, :, labels] += 180
    return images, labels


def test_mapping_is_class_conditional_and_shapes_hold():
    model = tiny_conditional()
    z = torch.randn(6, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    w = model.sample(z, labels)
    assert w.shape == (6, 16) and model.decode(w).shape == (6, 3, 32, 32)
    same_z = model.sample(z[:1].repeat(3, 1), torch.arange(3))
    assert not torch.allclose(same_z[0], same_z[1])  # one z, two classes: two latents
    images = torch.rand(6, 3, 32, 32)
    assert model.encode(images, labels).shape == (6, 16)
    with pytest.raises(ValueError, match="pass labels"):
        model.encode(images)
    reconstructions, squared_error, kl = model.elbo_terms(images, labels)
    assert reconstructions.shape == images.shape and squared_error.item() > 0 and kl.item() > 0


def test_sampled_latents_are_deterministic_and_independent_of_the_batch_size():
    model = tiny_conditional()
    counts = np.array([5, 3, 4])
    w, labels = sample_class_latents(model, counts, seed=7, batch_size=2)
    again, _ = sample_class_latents(model, counts, seed=7, batch_size=100)
    other, _ = sample_class_latents(model, counts, seed=8, batch_size=100)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], counts))
    np.testing.assert_allclose(w, again, rtol=0, atol=1e-6)
    assert not np.allclose(w, other)
    with pytest.raises(ValueError, match="no class-conditional mapping"):
        sample_class_latents(build_generator("style_vae", latent_dim=16, base_channels=8), counts, seed=0)


def test_class_means_of_sampled_latents_estimate_the_mapping_average():
    """μ_c from the sampled route is M's per-class average E_z[M(z, c)]: with many samples the stage's class
    mean matches an independent Monte Carlo estimate of it, and differs between classes."""
    model = tiny_conditional()
    w, labels = sample_class_latents(model, np.full(3, 4000), seed=0)
    means, counts = class_means(w, labels, 3)
    with torch.no_grad():
        z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(123))
        reference = np.stack([model.sample(z, torch.full((4000,), c)).mean(0).numpy() for c in range(3)])
    spread = w.std(0).mean()
    assert np.abs(means - reference).max() < 0.1 * spread
    assert np.abs(means[0] - means[1]).max() > 0.1 * spread
    assert counts.tolist() == [4000] * 3


def test_routes_give_latents_with_classes_and_residuals_only_when_encoded():
    model = tiny_conditional()
    images, labels = coloured_images(per_class=4)
    encoded = draw_latents(model, "encoded", images, labels, 3, batch_size=5)
    assert encoded.latents.shape == (12, 16) and encoded.residuals.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(encoded.labels, labels)
    sampled = draw_latents(model, "sampled", images, labels, 3, batch_size=5, per_class=6, seed=1)
    assert sampled.latents.shape == (18, 16) and sampled.residuals is None
    assert samples_per_class(labels, 3, 0).tolist() == [4, 4, 4]  # 0: as many as the ID set has
    # the mixing maths is the same for both routes
    means, _ = class_means(sampled.latents, sampled.labels, 3)
    mixed, sources, _ = synthesize_latents(sampled.latents, sampled.labels, means, method="dmr_mlm", k=2,
                                           num_samples=10, lambda_dist="uniform", lambda_min=1, lambda_max=3, seed=0)
    assert mixed.shape == (10, 16) and (sampled.labels[sources[:, 0]] != sampled.labels[sources[:, 1]]).all()
    with pytest.raises(ValueError, match="unknown latents route"):
        draw_latents(model, "dreamed", images, labels, 3, batch_size=5)


def test_conditional_training_learns_and_is_deterministic():
    images, labels = coloured_images()

    def trained():
        return prepare_generator("cond_style_vae", {"latent_dim": 16, "base_channels": 8}, TRAIN, images, labels,
                                 3).model

    first, second = trained(), trained()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    history = train_generator(tiny_conditional(), images, GeneratorTrainingConfig(
        epochs=6, batch_size=16, lr=0.005, beta_kl=0.1, seed=0), labels=labels)
    assert history.loss[-1] < history.loss[0]
    # prior samples of class c take class c's colour: the mapping carries the class
    longer = tiny_conditional()
    train_generator(longer, images, GeneratorTrainingConfig(epochs=15, batch_size=16, lr=0.005, beta_kl=1.0, seed=0),
                    labels=labels)
    w, sample_labels = sample_class_latents(longer, np.full(3, 8), seed=0)
    channel_of_class = decode_to_images(longer, w).astype(float).mean(axis=(1, 2)).argmax(1)
    assert (channel_of_class == sample_labels).mean() > 0.8
    with pytest.raises(ValueError, match="pass labels"):
        train_generator(tiny_conditional(), images, TRAIN)


def test_conditional_checkpoint_round_trip(tmp_path):
    model = tiny_conditional()
    save_generator(model, "cond_style_vae", tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    z, labels = torch.randn(3, 16), torch.arange(3)
    assert loaded.conditional and torch.equal(loaded.sample(z, labels), model.sample(z, labels))


# --- a user's generator through generator.kind: external -----------------------------------------------------

STAND_IN = '''
import torch
from torch import nn


class TinySynthesis(nn.Module):
    """A stand-in for a pretrained StyleGAN: w (2 x 8, like num_ws x w_dim) to an image."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.to_image = nn.Linear(16, 3 * 32 * 32)
        self.embed = nn.Embedding(3, 8)

    def mapping(self, z, c):
        return torch.stack([z + self.embed(c), z - self.embed(c)], dim=1)

    def forward(self, w):
        return torch.sigmoid(self.to_image(w.flatten(1))).view(-1, 3, 32, 32)


def load(seed=0, with_encoder=False):
    net = TinySynthesis(seed).eval()
    parts = {"decoder": net, "mapping": net.mapping, "z_dim": 8, "modules": [net]}
    if with_encoder:
        parts["encoder"] = lambda images: torch.zeros(len(images), 2, 8)
    return parts


def broken():
    return {"mapping": None}
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    yield from importable_module(tmp_path, monkeypatch, "stand_in_gan", STAND_IN)


def test_external_generator_samples_latents_of_any_shape_and_round_trips(stand_in, tmp_path):
    images, labels = coloured_images(per_class=4)
    prepared = prepare_generator("external", {}, TRAIN, images, labels, 3, entry_point=f"{stand_in}:load",
                                 options={"seed": 3})
    assert prepared.history.loss == [] and prepared.config == {"entry_point": f"{stand_in}:load", "options": {"seed": 3}}
    save_generator(prepared.model, "external", tmp_path / "g.pt", prepared.extra, prepared.config)
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    assert payload["state_dict"] == {}  # the user's weights stay in the user's file
    loaded = load_generator(tmp_path / "g.pt")
    drawn = draw_latents(loaded, "sampled", images, labels, 3, batch_size=5, seed=0)
    assert drawn.latents.shape == (12, 2, 8) and drawn.residuals is None
    means, _ = class_means(drawn.latents, drawn.labels, 3)
    assert means.shape == (3, 2, 8)
    mixed, _, _ = synthesize_latents(drawn.latents, drawn.labels, means, method="dmr_mlm", k=3, num_samples=5,
                                     lambda_dist="uniform", lambda_min=1, lambda_max=3, seed=0)
    out = decode_to_images(loaded, mixed)
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    # the fingerprint follows what the generator decodes, and only that
    assert probe_fingerprint(loaded) == prepared.extra["probe_sha256"]
    assert probe_fingerprint(load_external_generator(f"{stand_in}:load", {"seed": 4})) != prepared.extra["probe_sha256"]
    with pytest.raises(CheckpointError, match="gives no encoder: use latents.route: sampled"):
        draw_latents(loaded, "encoded", images, labels, 3, batch_size=5)
    with_encoder = load_external_generator(f"{stand_in}:load", {"with_encoder": True})
    assert draw_latents(with_encoder, "encoded", images, labels, 3, batch_size=5).latents.shape == (12, 2, 8)


@pytest.mark.parametrize("entry_point,options,message", [
    ("stand_in_gan:broken", {}, "returned no callable decoder"),
    ("stand_in_gan:missing", {}, "has no function missing"),
    ("stand_in_gan:load", {"no_such_option": 1}, r"failed \(TypeError"),
    ("no_such_package_xyz:load", {}, "importing no_such_package_xyz failed"),
])
def test_external_generator_errors_are_one_line(stand_in, entry_point, options, message):
    with pytest.raises(CheckpointError, match=message) as info:
        load_external_generator(entry_point, options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sections,message", [
    ({"latents": {"route": "sampled"}, "synth": {"detail": "none"}},
     "latents.route = 'sampled' with generator.kind = 'style_vae': .*cond_style_vae"),
    ({"latents": {"route": "sampled"}, "generator": {"kind": "cond_style_vae"}},
     "synth.detail = 'residual_dmr' with latents.route = 'sampled': .*set synth.detail: none"),
    ({"latents": {"samples_per_class": 10}}, "latents.samples_per_class = 10 with latents.route = 'encoded'"),
    ({"generator": {"kind": "external"}}, "generator.kind = 'external' with generator.entry_point = None"),
    ({"generator": {"entry_point": "a.b:c"}}, "generator.entry_point = 'a.b:c' with generator.kind = 'style_vae'"),
    ({"generator": {"options": {"pkl": "x"}}}, "generator.options = .* with generator.kind = 'style_vae'"),
    ({"generator": {"kind": "external", "entry_point": "no_such_package_xyz:load"}},
     "no module 'no_such_package_xyz' on the Python path"),
    ({"generator": {"kind": "external", "entry_point": "dmr_core.cli:main", "perceptual_weight": 1.0}},
     "generator.perceptual_weight = 1.0 with generator.kind = 'external'"),
    ({"generator": {"entry_point": "not an entry point"}}, "generator.entry_point = .*package.module:function"),
])
def test_generator_and_route_rules(sections, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(params_with(**sections))


def test_valid_route_and_external_settings_parse():
    parse_params(params_with(generator={"kind": "cond_style_vae"}, latents={"route": "sampled"},
                             synth={"detail": "none"}))
    parse_params(params_with(generator={"kind": "external", "entry_point": "dmr_core.cli:main",
                                        "options": {"pkl": "models/cifar10.pkl", "truncation": 1.0}},
                             latents={"route": "sampled", "samples_per_class": 100}, synth={"detail": "none"}))
