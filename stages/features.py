"""Stage features: the frozen classifier's representations of ID train/test and every OOD test set."""

from __future__ import annotations

from pathlib import Path

import zarr

from dmr_core.data.artifacts import atomic_output, write_zarr_arrays
from dmr_core.nets.classifier import load_classifier
from dmr_core.nets.features import extract_features
from dmr_core.params import Params

from ._common import id_split_path, ood_set_path, read_image_set, read_sets_index, run


def main(params: Params, datasets: Path, classifier: Path, out: Path) -> None:
    model = load_classifier(classifier, params.features.layer)
    sets = {"id_train": id_split_path(datasets, "train"), "id_test": id_split_path(datasets, "test")}
    ood_sets = read_sets_index(datasets)["ood_sets"]
    sets.update({f"ood/{name}": ood_set_path(datasets, name) for name in ood_sets})
    with atomic_output(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        for key, path in sets.items():
            images, labels, _ = read_image_set(path)
            arrays = extract_features(model, images, params.features.batch_size, desc=key)
            arrays["labels"] = labels.astype("int16")
            write_zarr_arrays(root.require_group(key), arrays, rows_per_chunk=2048)
            print(f"features {key}: {len(images)} images")
        root.attrs["ood_sets"] = ood_sets


if __name__ == "__main__":
    run(main, "features")
