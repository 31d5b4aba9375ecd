"""Stage generator: the generator DMR mixes latents of — trained on the ID training images (an (E, G) pair, or a
class-conditional VAE with a mapping network M), or a user's pretrained one plugged in (kind: external)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmr_core.data.artifacts import atomic_output, write_json
from dmr_core.nets.generator import decode_to_images, reconstruction_summary, sample_class_latents, save_generator
from dmr_core.distributed import is_main
from dmr_core.params import Params
from dmr_core.plotting import save_image_grid
from dmr_core.training.curves import write_curve
from dmr_core.training.generator import GeneratorTrainingConfig, prepare_generator
from dmr_core.training.perceptual import load_perceptual_loss

from dmr_core.data.layout import open_image_set, read_image_set
from dmr_core.data.streams import take_rows
from dmr_core.runtime.stage import run


def main(params: Params, train: Path, test: Path, perceptual_net: Path, out: Path, metrics: Path,
         plot: Path, curve: Path) -> None:
    p = params.generator
    train_x, train_y, attrs = read_image_set(train)
    test_x, test_y, _ = open_image_set(test)
    classes = len(attrs["class_names"])
    perceptual = load_perceptual_loss(perceptual_net, images_per_batch=p.perceptual_images)
    prepared = prepare_generator(p.kind, {"latent_dim": p.latent_dim, "base_channels": p.base_channels},
                                 p.to(GeneratorTrainingConfig), train_x, train_y, classes, perceptual,
                                 p.entry_point, p.options)
    if not is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        return
    model = prepared.model
    show = np.linspace(0, len(test_x) - 1, min(16, len(test_x))).astype(int)
    rows, result = [("ID test images", take_rows(test_x, show))], {"kind": p.kind}
    if model.can_encode:
        mse, psnr, shown = reconstruction_summary(model, test_x, test_y, show)
        print(f"generator {p.kind}: test reconstruction MSE {mse:.5f}, PSNR {psnr:.2f} dB")
        rows.append(("reconstructions G(E(x))", shown))
        result |= {"test_recon_mse": round(mse, 6), "test_recon_psnr_db": round(psnr, 3)}
    if model.conditional:  # one sample per class and column: what the sampled route decodes before any mixing
        per_class = min(16, len(test_x))
        latents, _ = sample_class_latents(model, np.full(classes, per_class), p.seed)
        samples = decode_to_images(model, latents)
        rows += [(f"G(M(z, {name}))", samples[c * per_class:(c + 1) * per_class])
                 for c, name in list(enumerate(attrs["class_names"]))[:4]]
    with atomic_output(out) as tmp:
        save_generator(model, p.kind, tmp, prepared.extra, prepared.config)
    write_json(metrics, result | {"train_loss_per_epoch": [round(v, 3) for v in prepared.history.loss]})
    write_curve(curve, prepared.history)
    title = f"{p.kind}: PSNR {result['test_recon_psnr_db']:.1f} dB" if "test_recon_psnr_db" in result else p.kind
    save_image_grid(rows, plot, ncols=16, title=title)


if __name__ == "__main__":
    run(main, "generator")
