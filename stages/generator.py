"""Stage generator: the encoder/generator pair (E, G) trained on the ID training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import atomic_output, write_json
from dmr_core.evaluation.metrics import reconstruction_error
from dmr_core.nets.generator import build_generator, reconstruct, save_generator
from dmr_core.params import Params
from dmr_core.plotting import save_image_grid
from dmr_core.training.curves import write_curve
from dmr_core.training.generator import GeneratorTrainingConfig, train_generator
from dmr_core.training.loop import seed_everything
from dmr_core.training.perceptual import load_perceptual_loss

from ._common import read_image_set, run


def main(params: Params, train: Path, test: Path, perceptual_net: Path, out: Path, metrics: Path,
         plot: Path, curve: Path) -> None:
    p = params.generator
    train_x, _, _ = read_image_set(train)
    test_x, _, _ = read_image_set(test)
    perceptual = load_perceptual_loss(perceptual_net, images_per_batch=p.perceptual_images)
    seed_everything(p.seed)  # the weight initialisation draws from the global RNG
    model = build_generator(p.kind, latent_dim=p.latent_dim, base_channels=p.base_channels)
    history = train_generator(model, train_x, p.to(GeneratorTrainingConfig), perceptual)
    recon = reconstruct(model, test_x)
    mse, psnr = reconstruction_error(test_x, recon)
    print(f"generator {p.kind}: test reconstruction MSE {mse:.5f}, PSNR {psnr:.2f} dB")
    with atomic_output(out) as tmp:
        save_generator(model, p.kind, tmp)
    write_json(metrics, {
        "kind": p.kind, "test_recon_mse": round(mse, 6), "test_recon_psnr_db": round(psnr, 3),
        "train_loss_per_epoch": [round(v, 3) for v in history.loss],
    })
    write_curve(curve, history)
    show = np.linspace(0, len(test_x) - 1, min(16, len(test_x))).astype(int)
    save_image_grid([("CIFAR-10 test images", test_x[show]), ("reconstructions G(E(x))", recon[show])],
                    plot, ncols=16, title=f"{p.kind}: PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    run(main, "generator")
