"""Other ID sets than CIFAR-10 (CIFAR-100, a user's folder or tar), OOD sets given as paths, and the OOD suites."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dmr_core.data.datasets import (
    CIFAR100_CLASSES,
    DataError,
    describe_id_set,
    is_path_spec,
    load_id_split,
    load_ood_set,
    select_ood_sets,
    set_name,
    suite_sets,
)
from dmr_core.params import ParamsError, parse_params
from helpers import USER_IMAGES, cifar100_archive, image_bytes, params_with, write_files, write_tar




def small_set_params(**data) -> dict:
    raw = params_with(data=data)
    # small enough for a 3-class set of 7 training images
    raw["synth"]["k"] = raw["synth_baselines"]["k"] = 2
    raw["baselines"].update(knn_k=2, reference_images=2)
    raw["synth_baselines"]["num_samples"] = 2
    return raw


@pytest.fixture
def user_folder(tmp_path) -> Path:
    return write_files(tmp_path / "pets", USER_IMAGES)


def test_a_user_folder_is_read_with_sorted_classes_and_every_image_fitted(user_folder):
    info = describe_id_set(str(user_folder))
    assert info.class_names == ("cat", "dog", "owl") and info.name == "pets"
    assert info.images == {"train": 7, "test": 3} and info.min_images_per_class == {"train": 2, "test": 1}
    train = load_id_split(str(user_folder), "train")
    assert train.images.shape == (7, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 2, 2])
    assert train.class_names == ["cat", "dog", "owl"]
    assert train.skipped["resized"] == 6 and train.skipped["converted_to_rgb"] == 4
    # a uniform image stays uniform through the rule, resized or not
    assert all(len(np.unique(image.reshape(-1, 3), axis=0)) == 1 for image in train.images)
    assert train.images[0, 0, 0, 0] == 10 and train.images[4, 0, 0, 0] == 50
    test = load_id_split(str(user_folder), "test")
    np.testing.assert_array_equal(test.labels, [0, 1, 2])


def test_a_tar_with_or_without_a_top_folder_reads_as_the_folder(tmp_path, user_folder):
    folder = load_id_split(str(user_folder), "train", per_class=1, seed=3)
    for tar in (write_tar(tmp_path / "flat.tar", USER_IMAGES), write_tar(tmp_path / "pets.tar", USER_IMAGES, "pets")):
        info = describe_id_set(str(tar))
        assert info.class_names == ("cat", "dog", "owl")
        same = load_id_split(str(tar), "train", per_class=1, seed=3)
        np.testing.assert_array_equal(same.images, folder.images)
        np.testing.assert_array_equal(same.labels, folder.labels)
    assert set_name(str(tmp_path / "pets.tar")) == "pets" and set_name(str(user_folder) + "/") == "pets"


@pytest.mark.parametrize("change,message", [
    (lambda root: [shutil.rmtree(root / split / c) for split in ("train", "test") for c in ("dog", "owl")],
     r"only one class \('cat'\) in train/"),
    (lambda root: (root / "train" / "emu").mkdir(), r"class folder\(s\) \['emu'\] hold no image files"),
    (lambda root: write_files(root, {"test/yak/a.png": image_bytes(1, (8, 8), "RGB")}),
     r"class\(es\) \['yak'\] have test images but no training images"),
    (lambda root: (root / "test" / "owl" / "a.png").unlink(), r"class\(es\) \['owl'\] have no test images"),
    (lambda root: write_files(root, {"train/loose.png": image_bytes(1, (8, 8), "RGB")}),
     "is not inside a class folder"),
    (lambda root: [p.rename(p.with_suffix(".txt")) for p in list(root.rglob("*.*")) if p.is_file()],
     r"no images in a train/ split"),
])
def test_bad_user_sets_are_refused_by_params_validation_in_one_line(user_folder, change, message):
    change(user_folder)
    with pytest.raises(ParamsError, match=rf"^invalid params: data\.id_set = '.*pets': .*{message}") as info:
        parse_params(small_set_params(id_set=str(user_folder)))
    assert "\n" not in str(info.value)


def test_a_folder_of_non_images_inside_class_folders_is_refused(tmp_path):
    root = write_files(tmp_path / "junk", {f"{split}/{c}/x.txt": b"text" for split in ("train", "test")
                                            for c in ("a", "b")})
    with pytest.raises(ParamsError, match=r"data\.id_set = .*no images in a train/ split"):
        parse_params(small_set_params(id_set=str(root)))


def test_images_that_do_not_decode_are_found_when_read(tmp_path):
    files = {**USER_IMAGES, "train/owl/a.png": b"not a png", "train/owl/sub/b.png": b"nor this"}
    root = write_files(tmp_path / "pets", files)
    with pytest.raises(DataError, match=r"class\(es\) \['owl'\] have no usable images .*'undecodable': 2"):
        load_id_split(str(root), "train")


def test_the_class_count_bounds_k_and_the_subsets(user_folder):
    parse_params(small_set_params(id_set=str(user_folder)))
    raw = small_set_params(id_set=str(user_folder))
    raw["synth"]["k"] = 4
    with pytest.raises(ParamsError, match=r"synth\.k = 4: at most the number of ID classes, 3"):
        parse_params(raw)
    with pytest.raises(ParamsError, match=r"data\.train_per_class = 3: pets's smallest class has 2 train images"):
        parse_params(small_set_params(id_set=str(user_folder), train_per_class=3))
    raw = small_set_params(id_set=str(user_folder))
    raw["baselines"]["knn_k"] = 8
    with pytest.raises(ParamsError, match=r"baselines\.knn_k = 8: .* 7 \(all 7 of pets's training split"):
        parse_params(raw)


def test_cifar100_reads_from_an_archive_in_cifar10s_layout(tmp_path, monkeypatch):
    cifar100_archive(tmp_path)
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    train = load_id_split("cifar100", "train", per_class=1)
    assert len(train.images) == 100 and train.class_names == list(CIFAR100_CLASSES)
    np.testing.assert_array_equal(train.labels, np.arange(100))
    assert train.source == "DMR_DATA_HOME/cifar100.tar"
    # as an OOD set of CIFAR-10 it is read from the same archive, unlabelled
    ood = load_ood_set("cifar100")
    assert len(ood.images) == 200 and (ood.labels == -1).all()


def test_cifar100_params_allow_k_up_to_100_and_name_cifar10_near():
    raw = small_set_params(id_set="cifar100", ood_sets="offline")
    raw["synth"]["k"] = 100
    raw["synth_baselines"]["k"] = 5
    assert parse_params(raw).synth.k == 100
    assert suite_sets("offline", "cifar100")[-1] == "cifar10"
    assert "cifar10" in suite_sets("paper", "cifar100") and "cifar100" not in suite_sets("paper", "cifar100")
    with pytest.raises(ParamsError, match=r"data\.ood_sets lists 'cifar100', the ID set"):
        parse_params(small_set_params(id_set="cifar100", ood_sets=["icons", "cifar100"]))


def test_ood_sets_given_as_paths(tmp_path, user_folder):
    folder = write_files(tmp_path / "my_ood", {f"any/depth/{i}.png": image_bytes(i, (48, 40), "RGB")
                                                for i in range(5)})
    tar = write_tar(tmp_path / "more.tar", {f"{i}.jpg": image_bytes(i, (20, 20), "L", "JPEG") for i in range(3)})
    raw = small_set_params(ood_sets=[str(folder), str(tar), "gaussian"])
    assert parse_params(raw).data.ood_sets[0] == str(folder)
    s = load_ood_set(str(folder), max_images=4)
    assert s.images.shape == (4, 32, 32, 3) and (s.labels == -1).all() and s.skipped == {"resized": 4}
    assert load_ood_set(str(tar)).skipped == {"resized": 3, "converted_to_rgb": 3}
    assert select_ood_sets(raw["data"]["ood_sets"], "cifar10").suite == "listed"
    with pytest.raises(ParamsError, match=r"data\.ood_sets = .*would both be reported as 'my_ood'"):
        parse_params(small_set_params(ood_sets=[str(folder), str(folder) + "/"]))
    (tmp_path / "icons").mkdir()
    with pytest.raises(ParamsError, match=r"would be reported as 'icons', the name of a built-in set"):
        parse_params(small_set_params(ood_sets=[str(tmp_path / "icons")]))
    with pytest.raises(ParamsError, match=r"data\.ood_sets = .*is not a folder or a \.tar archive"):
        parse_params(small_set_params(ood_sets=[str(tmp_path / "nowhere")]))


def test_auto_is_the_offline_suite_only_where_the_archives_are(tmp_path, monkeypatch):
    monkeypatch.delenv("DMR_DATA_HOME", raising=False)
    assert select_ood_sets("auto", "cifar10").suite == "paper"
    for name in ("textures_partial", "icons", "scenes_crop"):
        write_tar(tmp_path / f"{name}.tar", {})
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    assert select_ood_sets("auto", "cifar10").suite == "paper"  # tinyimagenet_part is missing
    write_tar(tmp_path / "tinyimagenet_part.tar", {})
    chosen = select_ood_sets("auto", "cifar10")
    assert chosen.suite == "offline" and chosen.sets == suite_sets("offline", "cifar10")
    assert select_ood_sets("paper", "cifar10").sets == (
        "svhn", "textures", "lsun_crop", "tinyimagenet_crop", "places365", "gaussian", "cifar100")


def test_a_bare_name_of_a_folder_in_the_project_is_that_folder(tmp_path, monkeypatch):
    write_files(tmp_path / "my_data", USER_IMAGES)
    (tmp_path / "icons").mkdir()  # a known set's name always means the set
    monkeypatch.chdir(tmp_path)
    assert describe_id_set("my_data").class_names == ("cat", "dog", "owl")
    assert parse_params(small_set_params(id_set="my_data")).data.id_set == "my_data"
    assert set_name("my_data") == "my_data" and not is_path_spec("icons") and is_path_spec("my_data")
    with pytest.raises(ParamsError, match=r"data\.id_set = 'my_date': unknown ID set 'my_date'"):
        parse_params(small_set_params(id_set="my_date"))
