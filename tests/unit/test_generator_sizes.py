"""Generators and the critic built for data.image_size: every trained kind encodes, decodes and round-trips at
32, 48, 64 (and 224) px, and a user's generator for another size than the data's is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dmr_core.errors import CheckpointError
from dmr_core.nets.checkpoints import load_checkpoint, save_checkpoint
from dmr_core.nets.critic import PatchCritic
from dmr_core.nets.external_generator import load_external_generator
from dmr_core.nets.generator import (
    GENERATOR_KINDS,
    SpatialConvVAE,
    StyleConvVAE,
    build_generator,
    decode_to_images,
    load_generator,
    save_generator,
    spatial_grid_cells,
)
from dmr_core.training.generator import GeneratorTrainingConfig, prepare_generator
from helpers import importable_module

NUM_CLASSES = 3
# 144 is a multiple of every grid the spatial latent sits on here: 16 cells at 32 and 64 px, 36 at 48 px
TINY = {"latent_dim": 144, "base_channels": 4}


def tiny(kind: str, image_size: int, **overrides) -> nn.Module:
    torch.manual_seed(0)
    classes = {"num_classes": NUM_CLASSES} if GENERATOR_KINDS[kind].conditional else {}
    return build_generator(kind, **(TINY | overrides), **classes, image_size=image_size).eval()


def labels_for(model: nn.Module, count: int) -> torch.Tensor | None:
    return torch.arange(count) % NUM_CLASSES if model.conditional else None


@pytest.mark.parametrize("image_size", [32, 48, 64])
@pytest.mark.parametrize("kind", sorted(GENERATOR_KINDS))
def test_every_kind_encodes_decodes_and_round_trips_at_the_size(kind, image_size, tmp_path):
    model = tiny(kind, image_size)
    images = torch.rand(3, 3, image_size, image_size)
    labels = labels_for(model, 3)
    with torch.no_grad():
        latents = model.encode(images, labels)
        assert latents.shape == (3, TINY["latent_dim"])
        decoded = model.decode(latents)
    assert decoded.shape == (3, 3, image_size, image_size)
    out = decode_to_images(model, latents.numpy(), batch_size=2)
    assert out.shape == (3, image_size, image_size, 3) and out.dtype == np.uint8
    assert model.image_size == image_size and model.config["image_size"] == image_size

    save_generator(model, kind, tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    assert type(loaded) is type(model) and loaded.image_size == image_size
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(images, labels)), decoded, rtol=0, atol=0)


def test_a_large_size_takes_its_extra_halvings_at_full_resolution():
    """224 px = 7·2⁵: five stride-2 convolutions, the two extra ones of c channels, down to a 7×7 grid; the style
    decoder mirrors it with a 3×3 convolution at 7×7, four upsamplings and the one to RGB."""
    c = 4
    model = tiny("style_vae", 224, latent_dim=8, base_channels=c)
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [c, c, c, 2 * c, 4 * c]
    assert model.to_mu.in_features == 4 * c * 7 * 7 and model.decoder.from_latent.out_features == 4 * c * 7 * 7
    assert [type(m).__name__ for m in model.decoder.layers] == ["Conv2d"] + ["ConvTranspose2d"] * 4
    assert [s.to_scale_shift.out_features // 2 for s in model.decoder.styles] == [4 * c, 2 * c, c, c, c]
    with torch.no_grad():
        latents = model.encode(torch.rand(2, 3, 224, 224))
        assert model.decode(latents).shape == (2, 3, 224, 224)
    assert decode_to_images(model, latents.numpy()).shape == (2, 224, 224, 3)


def test_conv_decoder_mirrors_the_encoder():
    c = 4
    model = tiny("conv_vae", 64, latent_dim=8, base_channels=c)
    assert [m.out_channels for m in model.encoder if isinstance(m, nn.Conv2d)] == [c, c, 2 * c, 4 * c]
    assert [m.out_channels for m in model.decoder if isinstance(m, nn.ConvTranspose2d)] == [2 * c, c, c, 3]
    assert model.decoder[0].unflattened_size == (4 * c, 4, 4)


def test_spatial_latent_sits_on_the_sizes_grid():
    assert [spatial_grid_cells(s) for s in (32, 48, 64, 224)] == [16, 36, 16, 49]
    with pytest.raises(ValueError) as info:
        SpatialConvVAE(latent_dim=256, base_channels=4, image_size=48)
    assert str(info.value) == ("spatial_vae at 48 px needs latent_dim divisible by 36 (channels on its 6×6 grid); "
                               "got 256")
    model = SpatialConvVAE(latent_dim=72, base_channels=4, image_size=48).eval()
    assert model.from_latent[0].unflattened_size == (2, 6, 6)  # 72 = 2 channels × 36 cells
    with pytest.raises(ValueError, match="image size 100 cannot be built"):
        spatial_grid_cells(100)


def test_a_checkpoint_without_a_size_is_a_32_px_one(tmp_path):
    model = tiny("style_vae", 32, latent_dim=8)
    save_generator(model, "style_vae", tmp_path / "g.pt")
    payload = load_checkpoint(tmp_path / "g.pt")
    del payload["config"]["image_size"]  # as the generator stage saved it before sizes varied
    save_checkpoint(payload, tmp_path / "old.pt")
    loaded = load_generator(tmp_path / "old.pt")
    assert isinstance(loaded, StyleConvVAE) and loaded.image_size == 32
    assert decode_to_images(loaded, np.zeros((1, 8), np.float32)).shape == (1, 32, 32, 3)


def test_decoding_checks_the_size_it_is_asked_for():
    model = tiny("conv_vae", 32, latent_dim=8)
    with pytest.raises(CheckpointError, match=r"shape \(2, 3, 32, 32\); DMR needs images N×3×48×48 in \[0, 1\]$"):
        decode_to_images(model, np.zeros((2, 8), np.float32), image_size=48)


def test_critic_scores_a_quarter_resolution_grid():
    assert PatchCritic(base_channels=4)(torch.rand(2, 3, 64, 64)).shape == (2, 1, 16, 16)


def test_a_conditional_kind_trains_at_the_size_of_its_images_with_the_critic():
    images = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)
    labels = np.arange(8) % NUM_CLASSES
    config = GeneratorTrainingConfig(epochs=1, batch_size=8, lr=1e-3, beta_kl=0.1, seed=0, adversarial_weight=0.5,
                                     adversarial_start_epoch=0)
    prepared = prepare_generator("cond_style_vae", {"latent_dim": 8, "base_channels": 4}, config, images, labels,
                                 NUM_CLASSES)
    assert prepared.config == {"latent_dim": 8, "base_channels": 4, "num_classes": NUM_CLASSES, "image_size": 48}
    assert prepared.model.conditional and np.isfinite(prepared.history.loss).all()


# --- a user's generator through generator.kind: external -----------------------------------------------------

SIZED_STAND_IN = '''
import torch
from torch import nn


class Synthesis(nn.Module):
    def __init__(self, size):
        super().__init__()
        torch.manual_seed(0)
        self.size = size
        self.to_image = nn.Linear(8, 3 * size * size)

    def forward(self, w):
        return torch.sigmoid(self.to_image(w)).view(-1, 3, self.size, self.size)


def load(size, declared=None):
    net = Synthesis(size).eval()
    parts = {"decoder": net, "mapping": lambda z, c: z + c[:, None].float(), "z_dim": 8, "modules": [net]}
    if declared is not None:
        parts["image_size"] = declared
    return parts


def never_decodes(declared):
    def decoder(w):
        raise AssertionError("decoded before the declared size was checked")
    return {"decoder": decoder, "mapping": lambda z, c: z, "z_dim": 8, "image_size": declared}
'''


@pytest.fixture
def sized_stand_in(tmp_path, monkeypatch):
    yield from importable_module(tmp_path, monkeypatch, "sized_stand_in_gan", SIZED_STAND_IN)


def test_an_external_generator_for_another_size_is_refused_in_one_line(sized_stand_in):
    entry = f"{sized_stand_in}:load"
    with pytest.raises(CheckpointError) as info:
        load_external_generator(entry, {"size": 64}, image_size=48)
    assert str(info.value) == (f"generator.entry_point = {entry!r} decodes 64×64 images but the data are 48×48 "
                               "(data.image_size); set data.image_size: 64 or give a generator for 48 px")
    with pytest.raises(CheckpointError) as info:  # the declared size is checked first, before anything decodes
        load_external_generator(f"{sized_stand_in}:never_decodes", {"declared": 64}, image_size=48)
    assert str(info.value).endswith("declares image_size 64 but the data are 48×48 (data.image_size); set "
                                    "data.image_size: 64 or give a generator for 48 px")
    with pytest.raises(CheckpointError, match="decodes 64×64 images but the data are 48×48") as info:
        load_external_generator(entry, {"size": 64, "declared": 48}, image_size=48)  # and the probe after it
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="decodes 48×48 images but the data are 32×32"):
        load_external_generator(entry, {"size": 48})  # the data's size defaults to the 32 px of old checkpoints


def test_an_external_generator_of_the_datas_size_round_trips_with_it(sized_stand_in, tmp_path):
    images = np.zeros((6, 48, 48, 3), np.uint8)
    labels = np.arange(6) % NUM_CLASSES
    train = GeneratorTrainingConfig(epochs=1, batch_size=4, lr=1e-3, beta_kl=0.1, seed=0)
    prepared = prepare_generator("external", {}, train, images, labels, NUM_CLASSES,
                                 entry_point=f"{sized_stand_in}:load", options={"size": 48, "declared": 48})
    assert prepared.config["image_size"] == 48 and prepared.model.image_size == 48
    save_generator(prepared.model, "external", tmp_path / "g.pt", prepared.extra, prepared.config)
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.image_size == 48
    assert decode_to_images(loaded, np.zeros((3, 8), np.float32)).shape == (3, 48, 48, 3)
