"""Stage data: the ID train/test splits and every OOD test set → uint8 zarr image sets (N×S×S×3, S =
data.image_size), and what was read from where. Each OOD set is passed through the ID data's encoding
(data.ood_encoding) and, when one was applied, also kept as stored under ``<name>.as_stored``. Every test set counts
each image once, and none holds an image of the other side (no ID image in an OOD set, no training image in the ID
test split)."""

from __future__ import annotations

from pathlib import Path

from dmr_core.data.artifacts import atomic_output, save_zarr, write_json
from dmr_core.data.datasets import ImageSet, load_id_split, load_ood_set, select_ood_sets, set_name
from dmr_core.data.encoding import as_stored_name, describe_encoding, jpeg_round_trip, resolve_encoding
from dmr_core.data.layout import id_split_path, ood_set_path, write_sets_index
from dmr_core.data.leakage import ImageDigests
from dmr_core.data.test_sets import refuse_shared_images, without_repeats
from dmr_core.params import Params
from dmr_core.runtime.stage import run


def _save(image_set: ImageSet, path: Path, role: str, images=None, applied: str = "none") -> None:
    save_zarr(path, {"images": image_set.images if images is None else images, "labels": image_set.labels}, attrs={
        "class_names": image_set.class_names, "source": image_set.source, "role": role,
        "skipped": image_set.skipped,
        "encoding": image_set.encoding.as_dict() if image_set.encoding is not None else None,
        "encoding_applied": applied,
    })


def _summary(image_set: ImageSet) -> dict:
    return {"images": len(image_set.images), "source": image_set.source, "skipped": image_set.skipped,
            "encoding": describe_encoding(image_set.encoding), "encoding_share": round(image_set.encoding_share, 4)}


def main(params: Params, out: Path, metrics: Path) -> None:
    p = params.data
    selection = select_ood_sets(p.ood_sets, p.id_set)
    summary: dict = {"id_set": p.id_set, "id_name": set_name(p.id_set), "image_size": p.image_size,
                     "ood_suite": {"asked": selection.asked, "used": selection.suite}}
    with atomic_output(out) as tmp:
        class_names: list[str] = []
        id_images = {}
        for split, per_class in (("train", p.train_per_class), ("test", p.test_per_class)):
            image_set = load_id_split(p.id_set, split, per_class=per_class, seed=p.seed, size=p.image_size)
            if split == "test":
                image_set = without_repeats(image_set)
                refuse_shared_images({"": image_set.images}, {"id_train": id_images["id_train"]}, "the ID test split",
                                     "a test split must hold no training image: remove them from one of the splits")
            _save(image_set, id_split_path(tmp, split), f"id_{split}")
            summary[f"id_{split}"] = _summary(image_set)
            class_names = image_set.class_names
            if split == "train":
                id_train = image_set
            id_images[f"id_{split}"] = ImageDigests(image_set.images)  # digested once for every check against it
        summary["classes"] = len(class_names)
        id_encoding = id_train.encoding
        encoding = resolve_encoding(p.ood_encoding, id_encoding, p.ood_jpeg_quality)
        summary["ood_encoding"] = {"setting": p.ood_encoding, "id_train_files": describe_encoding(id_encoding),
                                   "id_train_share": round(id_train.encoding_share, 4),
                                   "applied": describe_encoding(encoding), "as_stored_sets": encoding is not None}
        names, as_stored = [], []
        for spec in selection.sets:
            name = set_name(spec)
            image_set = without_repeats(load_ood_set(spec, max_images=p.ood_max, seed=p.seed,
                                                     gaussian_count=p.gaussian_count, size=p.image_size))
            forms = {"as stored": image_set.images}
            if encoding is not None:
                forms["passed through the ID encoding"] = jpeg_round_trip(image_set.images, encoding)
            refuse_shared_images(forms, id_images, f"OOD set {name}",
                                 "an OOD set must hold no image of the ID data: remove them from it")
            if encoding is None:
                _save(image_set, ood_set_path(tmp, name), "ood_test")
            else:
                _save(image_set, ood_set_path(tmp, name), "ood_test", forms["passed through the ID encoding"],
                      describe_encoding(encoding))
                _save(image_set, ood_set_path(tmp, as_stored_name(name)), "ood_test")
                as_stored.append(as_stored_name(name))
            summary.setdefault("ood", {})[name] = _summary(image_set)
            names.append(name)
        write_sets_index(tmp, class_names, names + as_stored)
        print(f"ID set {p.id_set}: {len(class_names)} classes; OOD sets ({selection.suite}): {', '.join(names)}")
        print(f"OOD sets encoded as the ID training files: {describe_encoding(encoding)}"
              + (" (each also evaluated as stored)" if as_stored else ""))
        for name, info in [("id_train", summary["id_train"]), ("id_test", summary["id_test"]),
                           *summary["ood"].items()]:
            skipped = f", skipped or changed: {info['skipped']}" if info["skipped"] else ""
            print(f"{name}: {info['images']} images from {info['source']}{skipped}")
    write_json(metrics, summary)


if __name__ == "__main__":
    run(main, "data")
