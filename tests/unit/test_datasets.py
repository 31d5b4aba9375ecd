"""Reading datasets: good archives, and every kind of bad one."""


import numpy as np
import pytest
import torch

from dmr_core.data.datasets import (
    CIFAR10_CLASSES,
    DataError,
    gaussian_noise,
    load_id_split,
    load_ood_set,
    read_tar_split,
)
from helpers import image_bytes, write_tar


def cifar_members(per_class=3, split="train"):
    return {f"cifar10/{split}/{c}/{i:04d}.png": image_bytes(value=10 * j + i)
            for j, c in enumerate(CIFAR10_CLASSES) for i in range(per_class)}


def test_reads_classes_in_standard_order(tmp_path):
    tar = write_tar(tmp_path / "c.tar", cifar_members())
    s = read_tar_split(tar, "cifar10", "train", CIFAR10_CLASSES)
    assert s.images.shape == (30, 32, 32, 3) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(s.labels), [3] * 10)
    assert s.images[s.labels == 9][0, 0, 0, 0] == 90


def test_subset_is_seeded(tmp_path):
    tar = write_tar(tmp_path / "c.tar", cifar_members(per_class=6))
    a = read_tar_split(tar, "cifar10", "train", CIFAR10_CLASSES, per_class=2, seed=1)
    b = read_tar_split(tar, "cifar10", "train", CIFAR10_CLASSES, per_class=2, seed=1)
    assert len(a.images) == 20
    np.testing.assert_array_equal(a.images, b.images)


def test_non_images_are_skipped_and_other_sizes_and_modes_fitted_and_counted(tmp_path):
    members = cifar_members()
    members["cifar10/train/cat/README.txt"] = b"hello"
    members["cifar10/train/cat/9999.png"] = image_bytes(size=(64, 48), value=200)  # resized, kept
    members["cifar10/train/dog/bad.jpg"] = b"not really a jpeg"
    members["cifar10/train/dog/gray.png"] = image_bytes(mode="L", value=7)  # converted, kept
    s = read_tar_split(write_tar(tmp_path / "c.tar", members), "cifar10", "train", CIFAR10_CLASSES)
    assert s.skipped == {"not_an_image": 1, "resized": 1, "undecodable": 1, "converted_to_rgb": 1}
    assert len(s.images) == 32 and s.images.shape[1:] == (32, 32, 3)
    assert {200, 7} <= set(np.unique(s.images))


def test_path_traversal_is_refused(tmp_path):
    for bad in ("../evil.png", "/etc/evil.png", "cifar10/train/cat/../../../x.png"):
        members = {**cifar_members(), bad: image_bytes()}
        with pytest.raises(DataError, match="absolute or '..' path"):
            read_tar_split(write_tar(tmp_path / "c.tar", members), "cifar10", "train", CIFAR10_CLASSES)


def test_truncated_archive(tmp_path):
    tar = write_tar(tmp_path / "c.tar", cifar_members())
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated or"):
        read_tar_split(tar, "cifar10", "train", CIFAR10_CLASSES)
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError):
        read_tar_split(tmp_path / "junk.tar", "cifar10", "train", CIFAR10_CLASSES)


def test_empty_class_and_unknown_label(tmp_path):
    members = {k: v for k, v in cifar_members().items() if "/frog/" not in k}
    with pytest.raises(DataError, match=r"\['frog'\] have no images"):
        read_tar_split(write_tar(tmp_path / "c.tar", members), "cifar10", "train", CIFAR10_CLASSES)
    members = {**cifar_members(), "cifar10/train/unicorn/0.png": image_bytes()}
    with pytest.raises(DataError, match="'unicorn' is not one of the classes"):
        read_tar_split(write_tar(tmp_path / "d.tar", members), "cifar10", "train", CIFAR10_CLASSES)
    members = {k: (b"not an image" if "/ship/" in k else v) for k, v in cifar_members().items()}
    with pytest.raises(DataError, match=r"\['ship'\] have no usable"):
        read_tar_split(write_tar(tmp_path / "e.tar", members), "cifar10", "train", CIFAR10_CLASSES)


def test_offline_set_missing_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("DMR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"put icons\.tar in the folder named by DMR_DATA_HOME"):
        load_ood_set("icons")
    # CIFAR-10: no archive and (here) no network: the error names the archive and the download
    monkeypatch.setattr("dmr_core.data.datasets._download_cifar",
                        lambda *a: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(DataError, match=r"put cifar10\.tar .* or allow the download .*network unreachable"):
        load_id_split("cifar10", "train")


def test_ood_set_from_data_home(tmp_path, monkeypatch):
    write_tar(tmp_path / "scenes_crop.tar", {f"scenes_crop/test/{i}.png": image_bytes(value=i) for i in range(7)})
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    s = load_ood_set("scenes_crop", max_images=5)
    assert s.images.shape == (5, 32, 32, 3) and (s.labels == -1).all()


def test_gaussian_matches_pytorch_ood_and_is_seeded():
    from pytorch_ood.dataset.img import GaussianNoise
    from torchvision.transforms.v2 import functional as TF

    count = 203  # past the first batch of 200 draws, so the stream must carry on across batches
    ours = gaussian_noise(count, seed=5, smooth=True)
    src = GaussianNoise(length=count, seed=5)  # draws on each access: read in order
    ref = np.stack([TF.resize(torch.from_numpy(np.array(src[i][0])).permute(2, 0, 1), [32, 32], antialias=True)
                    .permute(1, 2, 0).numpy() for i in range(count)])
    np.testing.assert_array_equal(ours, ref)
    assert ours.std() < 20  # smooth, near-gray
    raw = gaussian_noise(4, seed=5, smooth=False)
    assert raw.std() > 80  # per-pixel noise
    assert not np.array_equal(gaussian_noise(4, seed=6, smooth=True), ours)
