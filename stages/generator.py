"""Stage generator: the encoder/generator pair (E, G) trained on the ID training images."""

from __future__ import annotations

import numpy as np
import torch

from dmr_core.adversarial import train_vae_gan
from dmr_core.artifacts import atomic_output, write_json
from dmr_core.classifier import load_classifier
from dmr_core.generator import build_generator, decode_latents, encode_images, save_generator, train_generator
from dmr_core.params import Params
from dmr_core.perceptual import ClassifierPerceptualLoss
from dmr_core.plotting import save_image_grid
from dmr_core.training import seed_everything, to_uint8_images

from ._common import CLASSIFIER, GENERATOR, METRICS, PLOTS, id_split_path, read_image_set, run


def main(params: Params) -> None:
    p = params.generator
    train_x, _, _ = read_image_set(id_split_path("train"))
    test_x, _, _ = read_image_set(id_split_path("test"))
    # the frozen classifier judges the reconstructions (dmr_core/perceptual.py); loaded only when it is used
    perceptual = (ClassifierPerceptualLoss(load_classifier(CLASSIFIER), images_per_batch=p.perceptual_images)
                  if p.perceptual_weight > 0 else None)
    extra = dict(perceptual=perceptual, perceptual_weight=p.perceptual_weight,
                 perceptual_start_epoch=p.perceptual_start_epoch)
    seed_everything(p.seed)  # the weight initialisation draws from the global RNG
    model = build_generator(p.kind, latent_dim=p.latent_dim, base_channels=p.base_channels)
    if p.adversarial_weight > 0:
        history = train_vae_gan(model, train_x, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, beta_kl=p.beta_kl,
                                adversarial_weight=p.adversarial_weight,
                                adversarial_start_epoch=p.adversarial_start_epoch, seed=p.seed, **extra)
    else:
        history = train_generator(model, train_x, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                                  beta_kl=p.beta_kl, seed=p.seed, **extra)
    recon = to_uint8_images(decode_latents(model, torch.from_numpy(encode_images(model, test_x))))
    mse = float(np.mean((recon.astype(np.float64) - test_x) ** 2) / 255.0**2)
    psnr = float(10 * np.log10(1.0 / mse))
    print(f"generator {p.kind}: test reconstruction MSE {mse:.5f}, PSNR {psnr:.2f} dB")
    with atomic_output(GENERATOR) as tmp:
        save_generator(model, p.kind, tmp)
    write_json(METRICS / "generator.json", {
        "kind": p.kind, "test_recon_mse": round(mse, 6), "test_recon_psnr_db": round(psnr, 3),
        "train_loss_per_epoch": [round(v, 3) for v in history],
    })
    show = np.linspace(0, len(test_x) - 1, min(16, len(test_x))).astype(int)
    save_image_grid([("CIFAR-10 test images", test_x[show]), ("reconstructions G(E(x))", recon[show])],
                    PLOTS / "generator" / "recon.png", ncols=16, title=f"{p.kind}: PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    run(main, "generator")
