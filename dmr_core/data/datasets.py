"""The ID and OOD image sets of a run, read into uint8 arrays (N×S×S×3, S = ``data.image_size``).

ID sets: CIFAR-10 and CIFAR-100 (offline from ``$DMR_DATA_HOME/<name>.tar``, laid out
``<name>/<split>/<class>/<file>``, else a torchvision download into ``$DMR_CACHE``), or a user's folder or tar laid
out ``[<top>/]<split>/<class>/<image>`` with ``train`` and ``test`` splits. OOD test sets: the offline archives,
generated Gaussian noise, torchvision / pytorch-ood downloads, or a user's folder or tar of images. Every image goes
through one resize rule (:func:`dmr_core.data.sources.fit_image`). A relative path is taken from the project root.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from ..locations import cache_dir, env_folder, is_folder
from .encoding import JpegEncoding, dominant_encoding, jpeg_encoding_of
from .sources import IMAGE_SIZE, Entry, Listing, decode_image, fit_image, is_archive, list_images, read_payloads

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class BuiltinIdSet:
    """An ID set the project knows: its classes in their standard order, the images per class of each split, and
    the torchvision dataset that downloads it."""

    classes: tuple[str, ...]
    images_per_class: dict[str, int]
    torchvision_class: str


BUILTIN_ID_SETS = {
    "cifar10": BuiltinIdSet(CIFAR10_CLASSES, {"train": 5000, "test": 1000}, "CIFAR10"),
    "cifar100": BuiltinIdSet(CIFAR100_CLASSES, {"train": 500, "test": 100}, "CIFAR100"),
}
SPLITS = ("train", "test")

# archive file and its top folder, per offline set
OFFLINE_ARCHIVES = {
    "cifar10": ("cifar10.tar", "cifar10"),
    "cifar100": ("cifar100.tar", "cifar100"),
    "textures_partial": ("textures_partial.tar", "textures"),
    "icons": ("icons.tar", "icons"),
    "scenes_crop": ("scenes_crop.tar", "scenes_crop"),
    "tinyimagenet_part": ("tinyimagenet_part.tar", "tinyimagenet_part"),
}
# the sets that exist only as offline archives (no public download)
OFFLINE_OOD_SETS = ("textures_partial", "icons", "scenes_crop", "tinyimagenet_part")
GENERATED_SETS = ("gaussian", "gaussian_raw")  # the paper's smooth noise and per-pixel noise, made from a seed
# downloadable OOD sets: (module, dataset class, keyword arguments of its test split). The CIFARs are read from
# their offline archive when it is there, as for the ID set.
DOWNLOADABLE_SETS = {
    "svhn": ("torchvision.datasets", "SVHN", {"split": "test"}),
    "textures": ("pytorch_ood.dataset.img", "Textures", {}),
    "lsun_crop": ("pytorch_ood.dataset.img", "LSUNCrop", {}),
    "tinyimagenet_crop": ("pytorch_ood.dataset.img", "TinyImageNetCrop", {}),
    "places365": ("pytorch_ood.dataset.img", "Places365", {}),
    "cifar100": ("torchvision.datasets", "CIFAR100", {"train": False}),
    "cifar10": ("torchvision.datasets", "CIFAR10", {"train": False}),
}
OOD_SET_NAMES = (*OFFLINE_OOD_SETS, *GENERATED_SETS, *DOWNLOADABLE_SETS)
# The two ways to choose the OOD test sets by one word (``data.ood_sets: offline | paper``): the offline archives
# and the generated noise, or the six sets of the paper's Tables 1 and 4 (all downloaded but the generated noise)
# and the other CIFAR as a near-OOD set. For CIFAR-100 as ID the offline suite adds CIFAR-10 (its archive is there).
OOD_SUITES = {
    "offline": ("textures_partial", "icons", "scenes_crop", "tinyimagenet_part", "gaussian", "gaussian_raw"),
    "paper": ("svhn", "textures", "lsun_crop", "tinyimagenet_crop", "places365", "gaussian", "cifar100"),
}
RELATIVE_PATH_RULE = (
    "a relative path is taken from the project folder the stage runs in; `dvc exp run --temp` and queued "
    "experiments run in a copy elsewhere, so give an absolute path there"
)


@dataclass
class ImageSet:
    """Images (uint8 N×S×S×3), integer labels (-1 for OOD) and what was skipped or changed while reading."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)
    # how most of its files were encoded (None: not JPEG, or generated / downloaded as arrays) and their share
    encoding: JpegEncoding | None = None
    encoding_share: float = 0.0


def describe_env_folder(variable: str) -> str:
    """``DMR_DATA_HOME (now ../shared/data, i.e. /abs/shared/data)``: the value as typed and the folder it names,
    so that a message about a missing archive shows where it was looked for."""
    value = os.environ.get(variable)
    if not value:
        return f"{variable} (now unset)"
    folder = env_folder(variable)
    shown, where = _printable(value), _printable(str(folder))
    return f"{variable} (now {shown})" if str(folder) == value else f"{variable} (now {shown}, i.e. {where})"


def _printable(text: str) -> str:
    """``text`` as typed, or quoted with escapes where it holds a newline or another unprintable character, so
    that a message naming it stays one line."""
    return text if text.isprintable() else repr(text)


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
    if home is not None and not is_folder(home):
        raise DataError(
            f"{describe_env_folder('DMR_DATA_HOME')} is not a folder: point it at the folder holding the dataset "
            f"archives{relative_path_hint('DMR_DATA_HOME')}"
        )
    return home


def download_dir() -> Path:
    return cache_dir() / "downloads"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _group_by_class(listing: Listing, prefix: PurePosixPath, class_names: tuple[str, ...] | None,
                    where: str) -> dict[str, list[Entry]]:
    """{class name: its entries} (one group ``""`` without classes); every image must sit inside a class folder
    (at any depth below it) and every class folder must be one of ``class_names``."""
    groups: dict[str, list[Entry]] = {}
    depth = len(prefix.parts)
    for entry in listing.entries:
        if class_names is None:
            groups.setdefault("", []).append(entry)
            continue
        if len(entry.path.parts) < depth + 2:
            raise DataError(f"{where}: {entry.path} is not inside a class folder ({prefix}/<class>/<file>)")
        label = entry.path.parts[depth]
        if label not in class_names:
            raise DataError(f"{where}: folder {label!r} is not one of the classes {_short_list(class_names)}")
        groups.setdefault(label, []).append(entry)
    return groups


def _short_list(names: tuple[str, ...] | list[str], limit: int = 12) -> str:
    names = list(names)
    return str(names) if len(names) <= limit else f"{names[:limit]} and {len(names) - limit} more"


def read_split(
    source: Path,
    prefix: PurePosixPath,
    class_names: tuple[str, ...] | None,
    per_class: int = 0,
    max_images: int = 0,
    seed: int = 0,
    where: str | None = None,
    size: int = IMAGE_SIZE,
) -> ImageSet:
    """Read the images under ``prefix`` of a tar archive or folder, each brought to ``size`` × ``size`` RGB by
    :func:`~dmr_core.data.sources.fit_image`.

    With ``class_names`` the layout is ``<prefix>/<class>/.../<file>`` and labels index ``class_names``; a folder
    not in the list is an error, as is a class without images. Without it every image is OOD (label -1).
    ``per_class`` / ``max_images`` (0 = all) take a seeded random subset. Files that are not images, or cannot be
    decoded, are skipped and counted in ``skipped``, beside the count of images converted to RGB or resized.
    Members over ``MAX_MEMBER_BYTES`` (a sparse member can claim gigabytes in a tiny archive) are never read, and
    images over ``MAX_IMAGE_PIXELS`` never decoded: both are counted as ``too_large``.
    """
    where = where or str(source)
    listing = list_images(source, prefix)
    skipped: Counter[str] = Counter(listing.skipped)
    groups = _group_by_class(listing, prefix, class_names, where)
    if class_names is not None:
        empty = [c for c in class_names if not groups.get(c)]
        if empty:
            raise DataError(f"{where}: class(es) {_short_list(empty)} have no images under {prefix}/")
    elif not groups:
        raise DataError(f"{where}: no images under {prefix or 'it'}/")

    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, Entry]] = []
    for label_name in (class_names or ("",)):
        entries = sorted(groups[label_name], key=lambda e: _natural_key(str(e.path)))
        limit = per_class if class_names is not None else max_images
        if limit and limit < len(entries):
            keep = np.sort(rng.choice(len(entries), size=limit, replace=False))
            entries = [entries[i] for i in keep]
        label = class_names.index(label_name) if class_names is not None else -1
        chosen += [(label, e) for e in entries]

    labels_of = {id(entry): label for label, entry in chosen}
    images, labels, encodings = [], [], Counter()
    for entry, payload in read_payloads(source, [e for _, e in chosen]):
        if payload is None:
            skipped["unreadable"] += 1
            continue
        array, changes, reason = decode_image(payload, size)
        skipped.update(changes)
        if array is None:
            skipped[reason] += 1
            continue
        images.append(array)
        labels.append(labels_of[id(entry)])
        encodings[jpeg_encoding_of(payload)] += 1
    if class_names is not None:
        present = set(labels)
        empty = [c for i, c in enumerate(class_names) if i not in present]
        if empty:
            raise DataError(f"{where}: class(es) {_short_list(empty)} have no usable images (skipped: {dict(skipped)})")
    if not images:
        raise DataError(f"{where}: no usable images under {prefix or 'it'}/ (skipped: {dict(skipped)})")
    encoding, share = dominant_encoding(encodings)
    return ImageSet(images=np.stack(images), labels=np.asarray(labels, dtype=np.int16),
                    class_names=list(class_names or []), source=where, skipped=dict(skipped), encoding=encoding,
                    encoding_share=share)


def read_tar_split(archive: Path, top: str, split: str, class_names: tuple[str, ...] | None, per_class: int = 0,
                   max_images: int = 0, seed: int = 0, size: int = IMAGE_SIZE) -> ImageSet:
    """``<top>/<split>/...`` of an offline archive (see :func:`read_split`)."""
    if not archive.is_file():
        raise DataError(f"{archive} not found")
    image_set = read_split(archive, PurePosixPath(top, split), class_names, per_class, max_images, seed,
                           where=str(archive), size=size)
    image_set.source = f"DMR_DATA_HOME/{archive.name}"
    return image_set


@dataclass(frozen=True)
class IdSetInfo:
    """What params validation needs to know of an ID set before any stage runs: its name, its classes in label
    order, the fewest images any class has in each split, and its total images per split."""

    name: str
    class_names: tuple[str, ...]
    min_images_per_class: dict[str, int]
    images: dict[str, int]
    # where its splits are, for a folder or tar: the source and the folder holding train/ and test/
    source: Path | None = None
    top: PurePosixPath = PurePosixPath()


def is_path_spec(spec: str) -> bool:
    """Whether a data.id_set / data.ood_sets entry names a folder or archive rather than a known set: a path
    separator, a leading ``.`` or ``~``, a ``.tar`` suffix, or, for any other name, a folder or file of that name
    in the project root (a known set's name always means the set)."""
    if spec in BUILTIN_ID_SETS or spec in OOD_SET_NAMES:
        return False
    return ("/" in spec or os.sep in spec or spec.startswith((".", "~")) or spec.lower().endswith(".tar")
            or os.path.exists(spec))


def user_path(spec: str) -> Path:
    """The absolute path a data.id_set / data.ood_sets entry names (relative = from the project root)."""
    return Path(os.path.abspath(os.path.expanduser(spec)))


def set_name(spec: str) -> str:
    """The name a set is reported under: its own name, or for a path the folder's / archive's name."""
    if not is_path_spec(spec):
        return spec
    path = Path(os.path.expanduser(spec.rstrip("/" + os.sep)))
    return path.stem if path.suffix.lower() == ".tar" else path.name


def _split_top(source: Path, where: str) -> PurePosixPath:
    """The folder holding ``train/`` and ``test/``: the root, or one folder all images sit in (an archive made of
    a folder, ``tar cf set.tar set``). A folder is probed without walking it, so a wrong path costs nothing."""
    if is_archive(source):
        entries = list_images(source).entries
        firsts = {e.path.parts[0] for e in entries if len(e.path.parts) > 1}
        seconds = {e.path.parts[1] for e in entries if len(e.path.parts) > 2}
    else:
        firsts = {c.name for c in source.iterdir() if c.is_dir() and not c.name.startswith(".")}
        seconds = {g.name for name in firsts if len(firsts) == 1 for g in (source / name).iterdir() if g.is_dir()}
    if set(SPLITS) & firsts:
        return PurePosixPath()
    if len(firsts) == 1 and set(SPLITS) & seconds:
        return PurePosixPath(next(iter(firsts)))
    raise DataError(f"{where}: expected the layout <split>/<class>/<image> with train and test splits, found "
                    f"top-level folders {_short_list(sorted(firsts))}; arrange the images so")


def _scan_id_folder(path: Path, stamp: tuple) -> IdSetInfo:
    where = str(path)
    top = _split_top(path, where)
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    depth = len(top.parts)
    for split in SPLITS:
        for entry in list_images(path, top / split).entries:
            parts = entry.path.parts[depth:]
            if len(parts) < 3:
                raise DataError(f"{where}: {entry.path} is not inside a class folder (<split>/<class>/<image>); "
                                "move it into the folder of its class")
            counts[split][parts[1]] += 1
    for split in SPLITS:
        if not counts[split]:
            raise DataError(f"{where}: no images in a {split}/ split; an ID set needs train/<class>/<image> and "
                            "test/<class>/<image>")
    classes = tuple(sorted(counts["train"]))
    only_test = sorted(set(counts["test"]) - set(classes))
    if only_test:
        raise DataError(f"{where}: class(es) {_short_list(only_test)} have test images but no training images; "
                        "add training images or remove those test folders")
    no_test = [c for c in classes if not counts["test"][c]]
    if no_test:
        raise DataError(f"{where}: class(es) {_short_list(no_test)} have no test images; add some, or remove the "
                        "class from train/")
    empty = sorted(_empty_class_folders(path, top) - set(classes))
    if empty:
        raise DataError(f"{where}: class folder(s) {_short_list(empty)} hold no image files; add images or remove "
                        "the folder")
    if len(classes) < 2:
        raise DataError(f"{where}: only one class ({classes[0]!r}) in train/; an ID set needs at least two classes, "
                        "since the OOD images are mixed from distinct classes")
    return IdSetInfo(name=set_name(str(path)), class_names=classes,
                     min_images_per_class={s: min(counts[s][c] for c in classes) for s in SPLITS},
                     images={s: sum(counts[s].values()) for s in SPLITS}, source=path, top=top)


def _empty_class_folders(path: Path, top: PurePosixPath) -> set[str]:
    """Class folders of a folder ID set's splits (a tar's are known only by its images)."""
    if is_archive(path):
        return set()
    found = set()
    for split in SPLITS:
        folder = path.joinpath(*top.parts, split)
        if folder.is_dir():
            found |= {child.name for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")}
    return found


_scan_id_folder_cached = functools.lru_cache(maxsize=8)(_scan_id_folder)


def describe_id_set(spec: str) -> IdSetInfo:
    """The classes and image counts of ``data.id_set``: a built-in set, or a user's folder / tar, scanned (file
    names only, no image decoded) and checked for the ``<split>/<class>/<image>`` layout. A scan is cached while
    the folder or archive is unchanged."""
    if spec in BUILTIN_ID_SETS:
        known = BUILTIN_ID_SETS[spec]
        return IdSetInfo(spec, known.classes, dict(known.images_per_class),
                         {s: n * len(known.classes) for s, n in known.images_per_class.items()})
    if not is_path_spec(spec):
        raise DataError(f"unknown ID set {spec!r}: use one of {list(BUILTIN_ID_SETS)} or the path of a folder or "
                        "tar laid out <split>/<class>/<image> (write ./name for a folder in the project)")
    path = user_path(spec)
    if not path.exists():
        raise DataError(f"ID set {spec!r}: {path} not found{_relative_hint(spec)}")
    if not (path.is_dir() or is_archive(path)):
        raise DataError(f"ID set {spec!r}: {path} is neither a folder nor a .tar archive")
    stat = path.stat()
    return _scan_id_folder_cached(path, (stat.st_mtime_ns, stat.st_size))


def _relative_hint(spec: str) -> str:
    return f" ({RELATIVE_PATH_RULE})" if not os.path.isabs(os.path.expanduser(spec)) else ""


def gaussian_noise(count: int, seed: int, smooth: bool, size: int = IMAGE_SIZE) -> np.ndarray:
    """Gaussian-noise OOD images, ``size`` × ``size``.

    ``smooth=True`` follows the paper's evaluation: pytorch-ood ``GaussianNoise`` (224×224×3,
    N(128, 128²), clipped) resized to ``size`` × ``size`` with antialiasing — near-gray, smooth images.
    ``smooth=False`` draws N(128, 128²) per pixel at ``size`` (``gaussian_raw``, a harder set).
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    rng = np.random.default_rng(seed)
    if not smooth:
        return np.clip(rng.normal(128, 128, size=(count, size, size, 3)), 0, 255).astype(np.uint8)
    # Same stream as pytorch_ood.dataset.img.GaussianNoise(seed=seed), drawn a batch at a time: N(128, 128²) is
    # 128 + 128·z with the same z and the same float64 arithmetic as rng.normal(128, 128), computed in place in
    # one reused buffer (fresh 240 MB arrays per batch cost more than the draws' arithmetic).
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    batch = min(200, count)
    draws = np.empty((batch, 224, 224, 3))
    pixels = np.empty((batch, 224, 224, 3), dtype=np.uint8)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        z = rng.standard_normal(out=draws[:n])
        np.clip(np.add(np.multiply(z, 128.0, out=z), 128.0, out=z), 0, 255, out=z)
        big = pixels[:n]
        big[...] = z  # float64 → uint8 truncates, as astype does
        small = TF.resize(torch.from_numpy(big).permute(0, 3, 1, 2), [size, size], antialias=True)
        out[start:start + n] = small.permute(0, 2, 3, 1).numpy()
    return out


def _from_torch_dataset(dataset, max_images: int, seed: int, size: int) -> np.ndarray:
    indices = np.arange(len(dataset))
    if max_images and max_images < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), max_images, replace=False))
    return np.stack([fit_image(dataset[int(i)][0], size) for i in indices])


def _download_cifar(name: str, split: str, per_class: int, seed: int, size: int) -> ImageSet:
    import torchvision.datasets

    known = BUILTIN_ID_SETS[name]
    dataset_class = getattr(torchvision.datasets, known.torchvision_class)
    ds = dataset_class(str(download_dir()), train=split == "train", download=True)
    images, labels = np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int16)
    if list(ds.classes) != list(known.classes):
        raise DataError(f"the downloaded {name} names its classes differently from this project's list; "
                        "report this as a bug")
    if per_class:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([
            np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in range(len(known.classes))
        ])
        images, labels = images[keep], labels[keep]
    if size != images.shape[1]:
        from PIL import Image

        images = np.stack([fit_image(Image.fromarray(image), size) for image in images])
    return ImageSet(images, labels, list(known.classes), source=f"torchvision {known.torchvision_class} download")


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


def _offline_archive(name: str) -> Path | None:
    """The offline archive of a set in ``$DMR_DATA_HOME``, if it is there."""
    home = data_home()
    if name not in OFFLINE_ARCHIVES or home is None:
        return None
    archive = home / OFFLINE_ARCHIVES[name][0]
    return archive if archive.is_file() else None


def load_id_split(id_set: str, split: str, per_class: int = 0, seed: int = 0, size: int = IMAGE_SIZE) -> ImageSet:
    """The ``train`` or ``test`` split of ``data.id_set``: a built-in set from its offline archive if present, else
    torchvision's download; a user's folder or tar as laid out (classes in sorted order)."""
    info = describe_id_set(id_set)
    if info.source is not None:
        image_set = read_split(info.source, info.top / split, info.class_names, per_class=per_class, seed=seed,
                               size=size)
        image_set.source = id_set
        return image_set
    archive = _offline_archive(id_set)
    if archive is not None:
        return read_tar_split(archive, OFFLINE_ARCHIVES[id_set][1], split, info.class_names, per_class=per_class,
                              seed=seed, size=size)
    try:
        return _download_cifar(id_set, split, per_class, seed, size)
    except Exception as err:
        raise _missing(id_set, OFFLINE_ARCHIVES[id_set][0], err) from None


def load_ood_set(spec: str, max_images: int = 0, seed: int = 0, gaussian_count: int = 10000,
                 size: int = IMAGE_SIZE) -> ImageSet:
    """One OOD test set (labels all -1): generated, an offline archive, a download, or a user's folder or tar of
    images (every image under it, at any depth)."""
    if is_path_spec(spec):
        path = user_path(spec)
        if not (path.is_dir() or is_archive(path)):
            raise DataError(f"OOD set {spec!r}: {path} is not a folder or a .tar archive{_relative_hint(spec)}")
        image_set = read_split(path, PurePosixPath(), None, max_images=max_images, seed=seed, where=spec, size=size)
        image_set.source = spec
        return image_set
    if spec in GENERATED_SETS:
        count = min(gaussian_count, max_images) if max_images else gaussian_count
        images = gaussian_noise(count, seed, smooth=spec == "gaussian", size=size)
        return ImageSet(images, np.full(count, -1, np.int16), [], source=f"generated, seed {seed}")
    archive = _offline_archive(spec)
    if archive is not None:
        return read_tar_split(archive, OFFLINE_ARCHIVES[spec][1], "test", None, max_images=max_images, seed=seed,
                              size=size)
    if spec in OFFLINE_OOD_SETS:
        raise DataError(
            f"dataset {spec!r} is not available: put {OFFLINE_ARCHIVES[spec][0]} in the folder named by "
            f"{describe_env_folder('DMR_DATA_HOME')}; it has no public download" + relative_path_hint("DMR_DATA_HOME")
        )
    if spec not in DOWNLOADABLE_SETS:
        raise DataError(f"unknown OOD set {spec!r}; choose from {list(OOD_SET_NAMES)} or give the path of a folder "
                        "or tar of images")
    root = download_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset = _download(spec, root)
    except Exception as err:
        raise _missing(spec, OFFLINE_ARCHIVES.get(spec, (None,))[0], err) from None
    images = _from_torch_dataset(dataset, max_images, seed, size)
    return ImageSet(images, np.full(len(images), -1, np.int16), [], source=f"download ({spec})")


def offline_archives_present() -> bool:
    """Whether ``$DMR_DATA_HOME`` holds every archive of the offline suite."""
    home = data_home()
    return home is not None and all((home / OFFLINE_ARCHIVES[name][0]).is_file() for name in OFFLINE_OOD_SETS)


@dataclass(frozen=True)
class OodSelection:
    """The OOD test sets a run evaluates: what ``data.ood_sets`` asked for, the suite it came to (``offline``,
    ``paper`` or ``listed``) and the sets, as given (names or paths)."""

    asked: str | list[str]
    suite: str
    sets: tuple[str, ...]


def suite_sets(suite: str, id_set: str) -> tuple[str, ...]:
    """A suite's sets for an ID set: the other CIFAR is the near-OOD set of a CIFAR ID set (CIFAR-10 for CIFAR-100
    and the reverse), and no set is its own OOD set."""
    sets = list(OOD_SUITES[suite])
    if id_set == "cifar100":
        sets = [("cifar10" if s == "cifar100" else s) for s in sets]
        if "cifar10" not in sets:
            sets.append("cifar10")  # the offline suite: CIFAR-10 is in its archive
    return tuple(s for s in sets if s != id_set)


def select_ood_sets(ood_sets: str | list[str], id_set: str) -> OodSelection:
    """Resolve ``data.ood_sets``: a list is taken as it is; ``offline`` / ``paper`` name a suite; ``auto`` is
    ``offline`` when ``$DMR_DATA_HOME`` holds the offline archives and ``paper`` (downloads) otherwise. The choice
    made is written into the data stage's metrics, so a run says which sets it evaluated and from where."""
    if isinstance(ood_sets, list):
        return OodSelection(list(ood_sets), "listed", tuple(ood_sets))
    suite = ("offline" if offline_archives_present() else "paper") if ood_sets == "auto" else ood_sets
    return OodSelection(ood_sets, suite, suite_sets(suite, id_set))
