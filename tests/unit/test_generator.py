"""The generators' latent layouts: what a latent coordinate controls."""

import copy

import pytest
import torch

from dmr_core.nets.generator import ConvVAE, SpatialConvVAE, build_generator, load_generator, save_generator


def _quadrant_change(model, latent, coordinates):
    """Mean absolute change of the top-left 16×16 quadrant and the bottom-right 8×8 corner when ``coordinates``
    are perturbed (a 4×4-grid cell, after the 3×3 convolution and three transposed convolutions, reaches 23 pixels)."""
    with torch.no_grad():
        before = model.decode(latent)
        moved = latent.clone()
        moved[:, coordinates] += 3.0
        diff = (model.decode(moved) - before).abs()
    return diff[..., :16, :16].mean().item(), diff[..., 24:, 24:].mean().item()


def test_spatial_latent_round_trip_shapes():
    model = build_generator("spatial_vae", latent_dim=256, base_channels=8).eval()
    images = torch.rand(4, 3, 32, 32)
    latents = model.encode(images)
    assert latents.shape == (4, 256)
    assert model.decode(latents).shape == (4, 3, 32, 32)
    reconstructions, squared_error, kl = model.elbo_terms(images)
    assert reconstructions.shape == images.shape and squared_error.item() > 0 and kl.item() > 0


def test_spatial_latent_cell_controls_its_region_only():
    torch.manual_seed(0)
    model = SpatialConvVAE(latent_dim=256, base_channels=8).eval()
    latent = torch.randn(2, 256)
    top_left_cell = [channel * 16 + 0 for channel in range(16)]  # grid cell (0, 0) of every channel
    near, far = _quadrant_change(model, latent, top_left_cell)
    assert near > 0 and far == 0.0, "a 4×4-grid cell reaches only the pixels its receptive field covers"

    torch.manual_seed(0)
    vector = ConvVAE(latent_dim=256, base_channels=8).eval()
    near, far = _quadrant_change(vector, latent, list(range(16)))
    assert far > 0, "a vector latent's coordinate reaches the whole image"


def test_spatial_latent_needs_a_full_grid():
    with pytest.raises(ValueError, match="divisible by 16"):
        SpatialConvVAE(latent_dim=100)


def test_spatial_checkpoint_round_trip(tmp_path):
    model = SpatialConvVAE(latent_dim=64, base_channels=8).eval()
    save_generator(model, "spatial_vae", tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt").eval()
    assert isinstance(loaded, SpatialConvVAE)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode(x), model.encode(x))


def test_style_decoder_modulates_every_layer():
    """Each of the decoder's AdaIN layers normalises its input and lets the style move the decoded image."""
    torch.manual_seed(0)
    model = build_generator("style_vae", latent_dim=32, base_channels=8).eval()
    images = torch.rand(3, 3, 32, 32)
    latents = model.encode(images)
    reconstructions, squared_error, kl = model.elbo_terms(images)
    assert reconstructions.shape == images.shape and squared_error.item() > 0
    decoder = model.decoder
    assert len(decoder.styles) == len(decoder.layers) == 3
    with torch.no_grad():
        decoded = model.decode(latents)
        for i, adain in enumerate(decoder.styles):
            kept = copy.deepcopy(adain.to_scale_shift.state_dict())
            adain.to_scale_shift.weight.zero_()
            adain.to_scale_shift.bias.zero_()
            assert not torch.allclose(model.decode(latents), decoded), f"layer {i}'s style changes nothing"
            # with a zero affine map the layer is a plain instance norm: per-channel means 0 whatever the input
            features = torch.randn(3, adain.norm.num_features, 4, 4) * 5 + 3
            out = adain(features, decoder.mapping(latents))
            torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(3, out.shape[1]), atol=1e-5, rtol=0)
            adain.to_scale_shift.load_state_dict(kept)
    torch.testing.assert_close(model.decode(latents), decoded)


def test_style_checkpoint_round_trip(tmp_path):
    model = build_generator("style_vae", latent_dim=32, base_channels=8).eval()
    save_generator(model, "style_vae", tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    z = torch.randn(2, 32)
    torch.testing.assert_close(loaded.decode(z), model.decode(z))
