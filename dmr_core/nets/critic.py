"""The patch critic D that judges the realism of the generator's images when it is trained as a VAE-GAN."""

from __future__ import annotations

from torch import Tensor, nn


class PatchCritic(nn.Module):
    """Spectral-normalised convolutional critic (Miyato et al. 2018) for S×S RGB of any size S divisible by 4: one
    realism logit per position of an (S/4)×(S/4) grid (8×8 at 32 px), each seeing an 18×18 patch whatever S is, so
    it judges local texture and sharpness rather than what the image shows; being fully convolutional it needs no
    image size. About half the multiply-adds of the 32-px VAE's encoder, to keep adversarial training affordable
    on a CPU."""

    def __init__(self, base_channels: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        c = base_channels
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, c, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * c, 1, 3, 1, 1)),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2 - 1)
