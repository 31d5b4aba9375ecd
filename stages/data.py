"""Stage data: the ID train/test splits and every OOD test set → uint8 zarr image sets (N×32×32×3)."""

from __future__ import annotations

from pathlib import Path

from dmr_core.data.artifacts import atomic_output, save_zarr, write_json
from dmr_core.data.datasets import ImageSet, load_id_split, load_ood_set
from dmr_core.params import Params

from ._common import id_split_path, ood_set_path, run


def _save(image_set: ImageSet, path: Path, role: str) -> None:
    save_zarr(path, {"images": image_set.images, "labels": image_set.labels}, attrs={
        "class_names": image_set.class_names, "source": image_set.source, "role": role,
        "skipped": image_set.skipped,
    })


def main(params: Params, out: Path, metrics: Path) -> None:
    p = params.data
    summary = {}
    with atomic_output(out) as tmp:
        for split, per_class in (("train", p.train_per_class), ("test", p.test_per_class)):
            image_set = load_id_split(split, per_class=per_class, seed=p.seed)
            _save(image_set, id_split_path(tmp, split), f"id_{split}")
            summary[f"cifar10_{split}"] = {"images": len(image_set.images), "skipped": image_set.skipped}
        for name in p.ood_sets:
            image_set = load_ood_set(name, max_images=p.ood_max, seed=p.seed, gaussian_count=p.gaussian_count)
            _save(image_set, ood_set_path(tmp, name), "ood_test")
            summary[name] = {"images": len(image_set.images), "skipped": image_set.skipped}
        for name, info in summary.items():
            skipped = f", skipped or converted: {info['skipped']}" if info["skipped"] else ""
            print(f"{name}: {info['images']} images{skipped}")
    write_json(metrics, summary)


if __name__ == "__main__":
    run(main, "data")
