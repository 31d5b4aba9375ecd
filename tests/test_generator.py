"""The generators' latent layouts: what a latent coordinate controls."""

import pytest
import torch

from dmr_core.generator import ConvVAE, SpatialConvVAE, build_generator, load_generator, save_generator


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
    torch.manual_seed(0)
    model = build_generator("style_vae", latent_dim=32, base_channels=8).eval()
    images = torch.rand(3, 3, 32, 32)
    latents = model.encode(images)
    assert model.decode(latents).shape == (3, 3, 32, 32)
    reconstructions, squared_error, kl = model.elbo_terms(images)
    assert reconstructions.shape == images.shape and squared_error.item() > 0
    # the style path alone moves the image: change only the mapping network's input effect
    decoder = model.decoder
    with torch.no_grad():
        style = decoder.mapping(latents)
        x = decoder.from_latent(latents).unflatten(1, (4 * decoder.base_channels, 4, 4))
        h = decoder.layers[0](x)
        same = decoder.styles[0](h, style)
        other = decoder.styles[0](h, style.roll(1, dims=0))
    assert not torch.allclose(same, other), "AdaIN output depends on the style"
    # instance-normalised: with a zero affine map, the per-channel statistics are fixed whatever the input
    with torch.no_grad():
        decoder.styles[0].to_scale_shift.weight.zero_()
        decoder.styles[0].to_scale_shift.bias.zero_()
        out = decoder.styles[0](h * 5 + 3, style)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(3, out.shape[1]), atol=1e-5, rtol=0)


def test_style_checkpoint_round_trip(tmp_path):
    model = build_generator("style_vae", latent_dim=32, base_channels=8).eval()
    save_generator(model, "style_vae", tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    z = torch.randn(2, 32)
    torch.testing.assert_close(loaded.decode(z), model.decode(z))
