"""Reading the ID and OOD image sets into uint8 arrays (N×32×32×3).

Offline, sets come from the uncompressed tars in ``$DMR_DATA_HOME`` (layout
``<set>/<split>/[<class>/]<file>``; a relative path is taken from the project root), read member by member in
memory, never extracted; members and images too large to be real are skipped unread. Online, they
come from torchvision / pytorch-ood downloads into ``$DMR_CACHE``. Gaussian-noise sets are generated.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
IMAGE_SIZE = 32

# archive file and its top folder, per offline set
OFFLINE_ARCHIVES = {
    "cifar10": ("cifar10.tar", "cifar10"),
    "textures_partial": ("textures_partial.tar", "textures"),
    "icons": ("icons.tar", "icons"),
    "scenes_crop": ("scenes_crop.tar", "scenes_crop"),
    "tinyimagenet_part": ("tinyimagenet_part.tar", "tinyimagenet_part"),
}
OFFLINE_OOD_SETS = tuple(name for name in OFFLINE_ARCHIVES if name != "cifar10")
GENERATED_SETS = ("gaussian", "gaussian_raw")  # the paper's smooth noise and per-pixel noise, made from a seed
# downloadable OOD sets: (module, dataset class, keyword arguments of its test split)
DOWNLOADABLE_SETS = {
    "svhn": ("torchvision.datasets", "SVHN", {"split": "test"}),
    "textures": ("pytorch_ood.dataset.img", "Textures", {}),
    "lsun_crop": ("pytorch_ood.dataset.img", "LSUNCrop", {}),
    "tinyimagenet_crop": ("pytorch_ood.dataset.img", "TinyImageNetCrop", {}),
    "places365": ("pytorch_ood.dataset.img", "Places365", {}),
    "cifar100": ("torchvision.datasets", "CIFAR100", {"train": False}),
}
OOD_SET_NAMES = (*OFFLINE_OOD_SETS, *GENERATED_SETS, *DOWNLOADABLE_SETS)

# Archive bombs: a member is read into memory whole and an image decoded whole, so both are capped before either
# happens. The real members are a few KB (the largest is 5 KB) and only 32×32 images are kept; the caps sit far
# above any real image (an uncompressed 4K UHD RGBA bitmap is 33 MB and 8.3 M pixels) and far below what could
# hurt the machine (a decoded RGB image at the pixel cap is 50 MB).
MAX_MEMBER_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096
RELATIVE_PATH_RULE = (
    "a relative path is taken from the project folder the stage runs in; `dvc exp run --temp` and queued "
    "experiments run in a copy elsewhere, so give an absolute path there"
)


@dataclass
class ImageSet:
    """Images (uint8 N×32×32×3), integer labels (-1 for OOD) and what was skipped while reading."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)


def env_folder(variable: str) -> Path | None:
    """The folder an environment variable names, as an absolute path (None if unset or empty).

    A relative value is resolved against the working directory, which for a stage is the project root (DVC runs
    every stage command there), so ``DMR_DATA_HOME=../shared/data`` means ``shared/data`` beside the project root;
    made absolute once, it cannot change meaning in code that later changes directory.
    """
    value = os.environ.get(variable)
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def describe_env_folder(variable: str) -> str:
    """``DMR_DATA_HOME (now ../shared/data, i.e. /abs/shared/data)``: the value as typed and the folder it names,
    so that a message about a missing archive shows where it was looked for."""
    value = os.environ.get(variable)
    if not value:
        return f"{variable} (now unset)"
    folder = env_folder(variable)
    return f"{variable} (now {value})" if str(folder) == value else f"{variable} (now {value}, i.e. {folder})"


def relative_path_hint(variable: str) -> str:
    """The rule for relative paths, to end a message with, when ``variable`` holds one (else nothing)."""
    value = os.environ.get(variable)
    return f" ({RELATIVE_PATH_RULE})" if value and not os.path.isabs(os.path.expanduser(value)) else ""


def data_home() -> Path | None:
    """The folder of the offline archives, or None when ``DMR_DATA_HOME`` is unset.

    Set but missing is an error, not a fallback to downloads: it is most often a relative path read from
    another folder than the one it was written for, and a download would silently use other data.
    """
    home = env_folder("DMR_DATA_HOME")
    if home is not None and not home.is_dir():
        raise DataError(
            f"{describe_env_folder('DMR_DATA_HOME')} is not a folder: point it at the folder holding the dataset "
            f"archives{relative_path_hint('DMR_DATA_HOME')}"
        )
    return home


def cache_dir() -> Path:
    """``$DMR_CACHE`` (default ``~/.cache/dmr-pipeline``), absolute, for downloads and downloaded weights."""
    return env_folder("DMR_CACHE") or Path.home() / ".cache" / "dmr-pipeline"


def download_dir() -> Path:
    return cache_dir() / "downloads"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: member {member.name!r} has an absolute or '..' path; refusing to read this archive")
    return path


def _open_header(payload: bytes) -> Image.Image | str:
    """The opened image (only its header is read yet), or why it cannot be used: ``too_large`` / ``undecodable``.

    PIL's own bomb check fires inside ``Image.open`` (a warning above its global ``Image.MAX_IMAGE_PIXELS``, an
    error above twice that); both mean ``too_large`` here, and the global is left alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(payload))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too_large"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "undecodable"


def _decode_image(payload: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decode one image to 32×32 RGB; returns (array, None), (array, "converted_to_rgb") or (None, reason-for-skip).

    An image whose header claims more than ``MAX_IMAGE_PIXELS`` is skipped as ``too_large`` before any pixel is
    decoded, so a small file that decompresses to gigabytes costs nothing.
    """
    img = _open_header(payload)
    if isinstance(img, str):
        return None, img
    try:
        with img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                return None, "too_large"
            img.load()
            if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                return None, "wrong_size"
            if img.mode != "RGB":
                return np.asarray(img.convert("RGB"), dtype=np.uint8), "converted_to_rgb"
            return np.asarray(img, dtype=np.uint8), None
    except Image.DecompressionBombError:
        return None, "too_large"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None, "undecodable"


def read_tar_split(
    archive: Path,
    top: str,
    split: str,
    class_names: tuple[str, ...] | None,
    per_class: int = 0,
    max_images: int = 0,
    seed: int = 0,
) -> ImageSet:
    """Read ``<top>/<split>/...`` images from ``archive``.

    With ``class_names`` the layout is ``<top>/<split>/<class>/<file>`` and labels index ``class_names``;
    a folder not in the list is an error, as is a class without images. Without it every image is
    OOD (label -1). ``per_class`` / ``max_images`` (0 = all) take a seeded random subset.
    Files that are not images, or not 32×32, are skipped and counted in ``skipped``; images in another
    mode (grayscale, palette, RGBA) are converted to RGB and counted as ``converted_to_rgb``. Members over
    ``MAX_MEMBER_BYTES`` (a sparse member can claim gigabytes in a tiny archive) are never read, and images over
    ``MAX_IMAGE_PIXELS`` never decoded: both are counted as ``too_large``.
    """
    if not archive.is_file():
        raise DataError(f"{archive} not found")
    prefix = PurePosixPath(top, split)
    entries: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
    skipped: Counter[str] = Counter()
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                path = _safe_member_path(member, archive)
                if not member.isfile() or path.parts[: len(prefix.parts)] != prefix.parts:
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped["not_an_image"] += 1
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    skipped["too_large"] += 1
                    continue
                entries.append((path, member))
            end_of_members = tar.offset
        # A complete tar ends with two zero blocks; without them it was cut at a member boundary.
        if archive.stat().st_size < end_of_members + 2 * tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"archive ends after {end_of_members} bytes without its end-of-archive marker")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive} is truncated or not a tar archive ({err}); download or copy it again") from None

    groups: dict[str, list[tuple[PurePosixPath, tarfile.TarInfo]]] = {}
    depth = len(prefix.parts)
    for path, member in entries:
        if class_names is None:
            groups.setdefault("", []).append((path, member))
            continue
        if len(path.parts) != depth + 2:
            raise DataError(f"{archive}: {path} is not inside a class folder ({prefix}/<class>/<file>)")
        label = path.parts[depth]
        if label not in class_names:
            raise DataError(f"{archive}: folder {label!r} is not one of the classes {list(class_names)}")
        groups.setdefault(label, []).append((path, member))
    if class_names is not None:
        empty = [c for c in class_names if not groups.get(c)]
        if empty:
            raise DataError(f"{archive}: class(es) {empty} have no images under {prefix}/")
    elif not groups:
        raise DataError(f"{archive}: no images under {prefix}/")

    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, tarfile.TarInfo]] = []
    for label_name in (class_names or ("",)):
        members = sorted(groups[label_name], key=lambda pm: _natural_key(str(pm[0])))
        limit = per_class if class_names is not None else max_images
        if limit and limit < len(members):
            keep = np.sort(rng.choice(len(members), size=limit, replace=False))
            members = [members[i] for i in keep]
        label = class_names.index(label_name) if class_names is not None else -1
        chosen += [(label, m) for _, m in members]

    images, labels = [], []
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for label, member in chosen:
                handle = tar.extractfile(member)
                if handle is None:
                    skipped["unreadable"] += 1
                    continue
                array, reason = _decode_image(handle.read())
                if reason:
                    skipped[reason] += 1
                if array is None:
                    continue
                images.append(array)
                labels.append(label)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive} is truncated or corrupt ({err}); download or copy it again") from None
    if class_names is not None:
        present = set(labels)
        empty = [c for i, c in enumerate(class_names) if i not in present]
        if empty:
            raise DataError(f"{archive}: class(es) {empty} have no usable 32×32 images (skipped: {dict(skipped)})")
    if not images:
        raise DataError(f"{archive}: no usable 32×32 images under {prefix}/ (skipped: {dict(skipped)})")
    return ImageSet(
        images=np.stack(images), labels=np.asarray(labels, dtype=np.int16),
        class_names=list(class_names or []), source=f"DMR_DATA_HOME/{archive.name}", skipped=dict(skipped),
    )


def gaussian_noise(count: int, seed: int, smooth: bool) -> np.ndarray:
    """Gaussian-noise OOD images.

    ``smooth=True`` follows the paper's evaluation: pytorch-ood ``GaussianNoise`` (224×224×3,
    N(128, 128²), clipped) resized to 32×32 with antialiasing — near-gray, smooth images.
    ``smooth=False`` draws N(128, 128²) per pixel at 32×32 (``gaussian_raw``, a harder set).
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    rng = np.random.default_rng(seed)
    if not smooth:
        return np.clip(rng.normal(128, 128, size=(count, 32, 32, 3)), 0, 255).astype(np.uint8)
    # Same stream as pytorch_ood.dataset.img.GaussianNoise(seed=seed), drawn a batch at a time: N(128, 128²) is
    # 128 + 128·z with the same z and the same float64 arithmetic as rng.normal(128, 128), computed in place in
    # one reused buffer (fresh 240 MB arrays per batch cost more than the draws' arithmetic).
    out = np.empty((count, 32, 32, 3), dtype=np.uint8)
    batch = min(200, count)
    draws = np.empty((batch, 224, 224, 3))
    pixels = np.empty((batch, 224, 224, 3), dtype=np.uint8)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        z = rng.standard_normal(out=draws[:n])
        np.clip(np.add(np.multiply(z, 128.0, out=z), 128.0, out=z), 0, 255, out=z)
        big = pixels[:n]
        big[...] = z  # float64 → uint8 truncates, as astype does
        small = TF.resize(torch.from_numpy(big).permute(0, 3, 1, 2), [32, 32], antialias=True)
        out[start:start + n] = small.permute(0, 2, 3, 1).numpy()
    return out


def _resize_center(img: Image.Image) -> np.ndarray:
    """Shorter side to 32 px, then centre crop, as the usual 32×32 OOD benchmarks do."""
    from torchvision.transforms.v2 import functional as TF

    img = img.convert("RGB")
    img = TF.center_crop(TF.resize(img, IMAGE_SIZE, antialias=True), [IMAGE_SIZE, IMAGE_SIZE])
    return np.asarray(img, dtype=np.uint8)


def _from_torch_dataset(dataset, max_images: int, seed: int) -> np.ndarray:
    indices = np.arange(len(dataset))
    if max_images and max_images < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), max_images, replace=False))
    return np.stack([_resize_center(dataset[int(i)][0]) for i in indices])


def _download_cifar10(split: str, per_class: int, seed: int) -> ImageSet:
    from torchvision.datasets import CIFAR10

    root = download_dir()
    ds = CIFAR10(str(root), train=split == "train", download=True)
    images, labels = np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int16)
    if per_class:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([
            np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in range(10)
        ])
        images, labels = images[keep], labels[keep]
    return ImageSet(images, labels, list(CIFAR10_CLASSES), source="torchvision CIFAR10 download")


def _download(name: str, root: Path):
    """The torchvision / pytorch-ood test split of a downloadable OOD set, downloaded into ``root`` if absent."""
    module, dataset_class, kwargs = DOWNLOADABLE_SETS[name]
    return getattr(importlib.import_module(module), dataset_class)(str(root), download=True, **kwargs)


def _missing(name: str, archive: str | None, err: Exception | None) -> DataError:
    ways = []
    if archive:
        ways.append(f"put {archive} in the folder named by {describe_env_folder('DMR_DATA_HOME')}")
    ways.append(f"allow the download to {download_dir()} (needs internet{': ' + str(err) if err else ''})")
    return DataError(f"dataset {name!r} is not available: " + ", or ".join(ways) + relative_path_hint("DMR_DATA_HOME"))


def load_id_split(split: str, per_class: int = 0, seed: int = 0) -> ImageSet:
    """CIFAR-10 ``train``/``test``: from ``$DMR_DATA_HOME/cifar10.tar`` if present, else torchvision."""
    archive_name, top = OFFLINE_ARCHIVES["cifar10"]
    home = data_home()
    if home is not None and (home / archive_name).is_file():
        return read_tar_split(home / archive_name, top, split, CIFAR10_CLASSES, per_class=per_class, seed=seed)
    try:
        return _download_cifar10(split, per_class, seed)
    except Exception as err:
        raise _missing("cifar10", archive_name, err) from None


def load_ood_set(name: str, max_images: int = 0, seed: int = 0, gaussian_count: int = 10000) -> ImageSet:
    """One OOD test set by name (labels all -1)."""
    if name in GENERATED_SETS:
        count = min(gaussian_count, max_images) if max_images else gaussian_count
        images = gaussian_noise(count, seed, smooth=name == "gaussian")
        return ImageSet(images, np.full(count, -1, np.int16), [], source=f"generated, seed {seed}")
    if name in OFFLINE_ARCHIVES:
        archive_name, top = OFFLINE_ARCHIVES[name]
        home = data_home()
        if home is None or not (home / archive_name).is_file():
            raise DataError(
                f"dataset {name!r} is not available: put {archive_name} in the folder named by "
                f"{describe_env_folder('DMR_DATA_HOME')}; it has no public download"
                + relative_path_hint("DMR_DATA_HOME")
            )
        return read_tar_split(home / archive_name, top, "test", None, max_images=max_images, seed=seed)
    if name not in DOWNLOADABLE_SETS:
        raise DataError(f"unknown OOD set {name!r}; choose from {list(OOD_SET_NAMES)}")
    root = download_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset = _download(name, root)
    except Exception as err:
        raise _missing(name, None, err) from None
    images = _from_torch_dataset(dataset, max_images, seed)
    return ImageSet(images, np.full(len(images), -1, np.int16), [], source=f"download ({name})")
