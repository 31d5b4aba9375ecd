"""Stage features: the frozen classifier's representations of ID train/test and every OOD test set."""

from __future__ import annotations

from pathlib import Path

import zarr

from dmr_core.data.artifacts import shared_output, stream_zarr_rows
from dmr_core.distributed import batch_aligned, chunk_shard, is_main
from dmr_core.nets.classifier import load_classifier
from dmr_core.nets.features import feature_batches
from dmr_core.params import Params

from dmr_core.data.layout import id_split_path, ood_set_path, open_image_set, read_sets_index
from dmr_core.runtime.stage import run

ROWS_PER_CHUNK = 2048


def main(params: Params, datasets: Path, classifier: Path, out: Path) -> None:
    model = load_classifier(classifier, params.features.layer, params.features.max_grid)
    sets = {"id_train": id_split_path(datasets, "train"), "id_test": id_split_path(datasets, "test")}
    ood_sets = read_sets_index(datasets)["ood_sets"]
    sets.update({f"ood/{name}": ood_set_path(datasets, name) for name in ood_sets})
    # under torchrun each rank computes and writes its own whole chunks of every array (dmr_core.distributed)
    with shared_output(out) as tmp:
        if is_main():
            zarr.open_group(str(tmp), mode="w")
        for key, path in sets.items():
            images, labels, _ = open_image_set(path)
            rows = chunk_shard(len(images), ROWS_PER_CHUNK)
            span = batch_aligned(rows, params.features.batch_size, len(images))
            blocks = ((start, {**found, "labels": labels[start:start + len(found["logits"])].astype("int16")})
                      for start, found in feature_batches(model, images, params.features.batch_size, desc=key,
                                                          rows=span))
            stream_zarr_rows(tmp, key, blocks, rows, len(images), ROWS_PER_CHUNK)
            print(f"features {key}: {len(images)} images")
        if is_main():
            zarr.open_group(str(tmp), mode="r+").attrs["ood_sets"] = ood_sets


if __name__ == "__main__":
    run(main, "features")
