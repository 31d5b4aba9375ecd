"""Test sets a metric can average over: repeated images counted once, an ID image in an OOD set or a training image
in the ID test split refused in one line, by the data stage as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dmr_core.data.datasets import DataError, ImageSet
from dmr_core.data.test_sets import REPEATED, first_occurrences, refuse_shared_images, without_repeats
from helpers import image_bytes, params_with, project_pythonpath, write_files


def images_from_palette(picks: list[int]) -> np.ndarray:
    """One 32×32 image per pick, each pick a distinct flat colour (so equal picks are equal images)."""
    return np.stack([np.full((32, 32, 3), pick, dtype=np.uint8) for pick in picks])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_every_image_is_kept_once_in_its_first_place(picks):
    images = images_from_palette(picks)
    keep = first_occurrences(images)
    assert [p for p, k in zip(picks, keep) if k] == list(dict.fromkeys(picks))  # first of each, in order
    image_set = ImageSet(images, np.arange(len(picks)), [], "test", skipped={"resized": 2})
    once = without_repeats(image_set)
    assert len(once.images) == len(set(picks))
    assert once.labels.tolist() == [i for i, k in enumerate(keep) if k]  # labels stay with their images
    assert once.skipped.get(REPEATED, 0) == len(picks) - len(set(picks))
    assert once.skipped["resized"] == 2


def test_images_that_differ_in_one_value_are_not_repeats():
    images = images_from_palette([5, 5])
    images[1, 31, 31, 2] = 6
    assert first_occurrences(images).tolist() == [True, True]


def test_an_image_shared_with_another_set_is_refused_in_one_line_naming_the_form_and_the_sets():
    ood = images_from_palette([1, 2, 3, 4])
    encoded = images_from_palette([1, 2, 7, 8])  # as if the ID encoding turned two of them into ID images
    others = {"id_train": images_from_palette([7, 9]), "id_test": images_from_palette([8])}
    refuse_shared_images({"as stored": ood}, others, "OOD set x", "remove them")  # nothing shared as stored
    with pytest.raises(DataError) as err:
        refuse_shared_images({"as stored": ood, "encoded": encoded}, others, "OOD set x", "remove them")
    assert str(err.value) == ("OOD set x: 2 of its 4 images encoded are identical (after the 32×32 resize rule) to "
                              "images of id_train: 1, id_test: 1; remove them")


def png(value: int, size: tuple[int, int] = (40, 40)) -> bytes:
    """A flat image whose colour ``value`` picks (so equal values are equal images, at any size)."""
    return image_bytes((value, 255 - value, value // 2), size)


def run_data_stage(project: Path, id_set: Path, ood_set: Path) -> subprocess.CompletedProcess:
    # small enough for a 2-class set of 4 training images
    raw = params_with(data={"id_set": str(id_set), "ood_sets": [str(ood_set)], "train_per_class": 0,
                            "test_per_class": 0}, synth={"k": 2}, synth_baselines={"k": 2, "num_samples": 2},
                      baselines={"knn_k": 2, "reference_images": 2})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "stages.data", "--out", "data/datasets", "--metrics", "metrics/data.json"]
    return subprocess.run(command, check=False, cwd=project, capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": project_pythonpath()})


ID_FILES = {"train/a/1.png": png(10), "train/a/2.png": png(20), "train/b/1.png": png(30), "train/b/2.png": png(40),
            "test/a/1.png": png(50), "test/b/1.png": png(60)}


def test_repeats_in_an_ood_set_and_in_the_id_test_split_count_once_and_are_reported(tmp_path):
    ood_files = {"x.png": png(100), "x_copy.png": png(100), "x_large.png": png(100, (80, 80)), "y.png": png(110)}
    id_files = {**ID_FILES, "test/b/1_copy.png": png(60)}
    write_files(tmp_path / "mine", id_files)
    write_files(tmp_path / "other", ood_files)
    result = run_data_stage(tmp_path, tmp_path / "mine", tmp_path / "other")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "metrics" / "data.json").read_text())
    # the 80×80 copy is the same image once the resize rule has made it 32×32
    assert summary["ood"]["other"]["images"] == 2 and summary["ood"]["other"]["skipped"][REPEATED] == 2
    assert summary["id_test"]["images"] == 2 and summary["id_test"]["skipped"][REPEATED] == 1
    assert summary["id_train"]["images"] == 4 and REPEATED not in summary["id_train"]["skipped"]


@pytest.mark.parametrize("case", ["ood_holds_an_id_test_image", "ood_holds_an_id_train_image",
                                  "id_test_holds_a_training_image"])
def test_a_set_holding_the_other_sides_images_is_refused_in_one_line_and_nothing_is_written(tmp_path, case):
    id_files, ood_files = dict(ID_FILES), {"x.png": png(100), "y.png": png(110), "z.png": png(120)}
    if case == "ood_holds_an_id_test_image":
        ood_files["copied.png"] = ID_FILES["test/a/1.png"]
    elif case == "ood_holds_an_id_train_image":
        ood_files["copied.png"] = ID_FILES["train/b/2.png"]
    else:
        id_files["test/a/2.png"] = ID_FILES["train/a/1.png"]
    write_files(tmp_path / "mine", id_files)
    write_files(tmp_path / "other", ood_files)
    result = run_data_stage(tmp_path, tmp_path / "mine", tmp_path / "other")
    assert result.returncode == 1
    expected = {
        "ood_holds_an_id_test_image": "OOD set other: 1 of its 4 images are identical (after the 32×32 resize rule) to "
                                      "images of id_test: 1; an OOD set must hold no image of the ID data: remove "
                                      "them from it",
        "ood_holds_an_id_train_image": "OOD set other: 1 of its 4 images are identical (after the 32×32 resize rule) "
                                       "to images of id_train: 1; an OOD set must hold no image of the ID data: remove "
                                       "them from it",
        "id_test_holds_a_training_image": "the ID test split: 1 of its 3 images are identical (after the 32×32 resize "
                                          "rule) to images of id_train: 1; a test split must hold no training image: "
                                          "remove them from one of the splits",
    }[case]
    assert result.stderr.strip().splitlines() == [f"error in stage data: {expected}"]
    # no output, not even a half-written one (the stage writes under a temporary name in data/)
    assert not any((tmp_path / "data").iterdir()) and not (tmp_path / "metrics").exists()
