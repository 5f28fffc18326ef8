"""Readers of each data set's official on-disk format, the image-folder layout, and downloads.

A reader returns :class:`RawSplits`: class names and ``(item, label)`` lists, where an item is a
file path or an HWC uint8 array (CIFAR). Nothing here applies transforms or subsets.
"""
from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spa.data.readable import drop_unreadable

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[Any, int]


@dataclass
class RawSplits:
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    layout: str                     # "image_folder" or the official format's name
    stats: dict[str, Any] = field(default_factory=dict)
    val: list[Sample] | None = None  # a validation split the data ships (an image folder's val/)


class DatasetNotFoundError(FileNotFoundError):
    """The data is neither on disk nor downloadable; the message names the fix."""


def not_found(display: str, root: Path, expected: str, cause: str | None = None) -> DatasetNotFoundError:
    msg = (
        f"{display} not found under {root} (looked for {expected}, or an image-folder layout "
        f"train/<class>/*, test/<class>/*). Fix one of: run with dataset.download=true (needs internet); "
        f"put the data there; or point dataset.root=PATH or the SPA_DATA_DIR environment variable at it."
    )
    if cause:
        msg += f" The download failed: {cause}"
    return DatasetNotFoundError(msg)


# ----------------------------------------------------------------------------- image folder
def has_image_folder_layout(root: Path) -> bool:
    """True when ``root/train`` and ``root/test`` exist and hold one sub-folder per class."""
    return all((root / split).is_dir() and any(p.is_dir() for p in (root / split).iterdir())
               for split in ("train", "test"))


def _folder_samples(split_dir: Path, class_index: dict[str, int]) -> list[Sample]:
    samples: list[Sample] = []
    for name, label in class_index.items():
        folder = split_dir / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        samples.extend((str(p), label) for p in files)
    return samples


TEST_SPLITS = ("test", "val")     # dataset.test_split: the folder an image folder's test split is read from


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []


def train_val_only(root: Path) -> bool:
    """``root/train`` and ``root/val`` hold class folders and ``root/test`` does not exist (the layout
    of many public image sets, whose test labels are withheld)."""
    return bool(_class_dirs(root / "train")) and bool(_class_dirs(root / "val")) and not (root / "test").exists()


def read_image_folder(root: Path, skip_unreadable: bool = False, test_split: str = "test") -> RawSplits:
    """``root/{train,test}/<class>/<image>``, and ``root/val/<class>/<image>`` as the validation split
    where it exists; ``test_split="val"`` reads the test split from ``val/`` instead (a root without
    ``test/``). Classes = sorted folder names under ``train``. Unreadable files raise, or are left out
    and counted with ``skip_unreadable`` (:func:`drop_unreadable`)."""
    if test_split not in TEST_SPLITS:
        raise ValueError(f"dataset.test_split={test_split!r}: use one of {', '.join(TEST_SPLITS)}")
    classes = _class_dirs(root / "train")
    index = {name: i for i, name in enumerate(classes)}
    val_dir = root / "val" if test_split == "test" and _class_dirs(root / "val") else None
    for split in (test_split, *(["val"] if val_dir else [])):
        unknown = sorted(set(_class_dirs(root / split)) - set(classes))
        if unknown:
            raise ValueError(f"{root}/{split} has classes that train lacks: {unknown}")
    train, test = _folder_samples(root / "train", index), _folder_samples(root / test_split, index)
    if not train or not test:
        raise ValueError(f"image folder {root} has no images in train/ or {test_split}/ ({len(train)}, {len(test)})")
    val = _folder_samples(val_dir, index) if val_dir else []
    if val_dir and not val:
        raise ValueError(f"image folder {root} has class folders in val/ but no images in them")
    splits, stats = drop_unreadable(root, [train, test, val] if val else [train, test], skip_unreadable)
    return RawSplits(classes, splits[0], splits[1], layout="image_folder", stats=stats,
                     val=splits[2] if val else None)


# ----------------------------------------------------------------------------- CIFAR
CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def _cifar_arrays(batch: dict, label_key: str) -> list[Sample]:
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return [(img, int(lbl)) for img, lbl in zip(images, batch[label_key])]


def read_cifar(root: Path, variant: str) -> RawSplits:
    """The official python pickles: ``cifar-10-batches-py`` or ``cifar-100-python`` under root."""
    folder = root / CIFAR_ARCHIVES[variant][2]
    if variant == "cifar10":
        meta = _unpickle(folder / "batches.meta")
        train = [s for i in range(1, 6) for s in _cifar_arrays(_unpickle(folder / f"data_batch_{i}"), "labels")]
        test = _cifar_arrays(_unpickle(folder / "test_batch"), "labels")
        classes = list(meta["label_names"])
    else:
        meta = _unpickle(folder / "meta")
        train = _cifar_arrays(_unpickle(folder / "train"), "fine_labels")
        test = _cifar_arrays(_unpickle(folder / "test"), "fine_labels")
        classes = list(meta["fine_label_names"])
    return RawSplits(classes, train, test, layout=variant)


def cifar_present(root: Path, variant: str) -> bool:
    folder = root / CIFAR_ARCHIVES[variant][2]
    needed = (["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
              if variant == "cifar10" else ["meta", "train", "test"])
    return all((folder / name).is_file() for name in needed)


def download_cifar(root: Path, variant: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive
    url, md5, _ = CIFAR_ARCHIVES[variant]
    download_and_extract_archive(url, str(root), md5=md5)


# ----------------------------------------------------------------------------- Flowers 102
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = {"102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
                 "imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
                 "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c"}


def flowers_present(root: Path) -> bool:
    base = root / "flowers-102"
    return (base / "jpg").is_dir() and (base / "imagelabels.mat").is_file() and (base / "setid.mat").is_file()


def read_flowers102(root: Path, skip_unreadable: bool = False) -> RawSplits:
    """Official layout ``flowers-102/{jpg/, imagelabels.mat, setid.mat}``; train = trn + val (2,040).
    Unreadable files raise, or are left out and counted with ``skip_unreadable`` (:func:`drop_unreadable`)."""
    from scipy.io import loadmat
    base = root / "flowers-102"
    labels = loadmat(base / "imagelabels.mat")["labels"].reshape(-1)
    setid = loadmat(base / "setid.mat")

    def pick(key: str) -> list[Sample]:
        ids = np.asarray(setid[key]).reshape(-1)
        return [(str(base / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in sorted(ids)]

    classes = [f"{i:03d}" for i in range(1, int(labels.max()) + 1)]
    (train, test), stats = drop_unreadable(base, [pick("trnid") + pick("valid"), pick("tstid")], skip_unreadable)
    return RawSplits(classes, train, test, layout="flowers102", stats=stats)


def download_flowers102(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive, download_url
    base = root / "flowers-102"
    download_and_extract_archive(FLOWERS_URL + "102flowers.tgz", str(base), md5=FLOWERS_FILES["102flowers.tgz"])
    for name in ("imagelabels.mat", "setid.mat"):
        download_url(FLOWERS_URL + name, str(base), md5=FLOWERS_FILES[name])


# ----------------------------------------------------------------------------- Cats & Dogs
PETIMAGES_URL = ("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
                 "kagglecatsanddogs_5340.zip")
PET_CLASSES = ("Cat", "Dog")


def petimages_present(root: Path) -> bool:
    return all((root / "PetImages" / c).is_dir() for c in PET_CLASSES)


def _pet_sort_key(rel: str) -> tuple[str, int, str]:
    cls, name = rel.split("/", 1)
    stem = Path(name).stem
    return (cls, int(stem) if stem.isdigit() else -1, name)


def read_petimages(root: Path, split_seed: int, train_fraction: float = 0.7, train_size: int | None = 8005,
                   test_size: int | None = 2023, skip_unreadable: bool = True) -> RawSplits:
    """Microsoft PetImages: seeded shuffle, 70/30 split, truncated to 8,005 / 2,023 as the paper. The
    archive ships broken files, left out and counted by default (:func:`drop_unreadable`)."""
    base = root / "PetImages"
    files = sorted((str(p.relative_to(base)) for c in PET_CLASSES for p in (base / c).iterdir()
                    if p.suffix.lower() in IMG_EXTENSIONS), key=_pet_sort_key)
    (samples,), stats = drop_unreadable(base, [[(str(base / rel), PET_CLASSES.index(rel.split("/")[0]))
                                                 for rel in files]], skip_unreadable)
    random.Random(split_seed).shuffle(samples)
    cut = int(round(train_fraction * len(samples)))
    train, test = samples[:cut], samples[cut:]
    train, test = train[:train_size] if train_size else train, test[:test_size] if test_size else test
    return RawSplits([c.lower() for c in PET_CLASSES], train, test, layout="petimages", stats=stats)


def download_petimages(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive
    download_and_extract_archive(PETIMAGES_URL, str(root))


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Source:
    display: str
    expected: str                                     # what the official layout looks like
    present: Callable[[Path], bool] | None
    read: Callable[..., RawSplits] | None
    download: Callable[[Path], None] | None
    skip_unreadable: bool = False                     # what dataset.skip_unreadable=null means for this source


SOURCES: dict[str, Source] = {
    "cifar10": Source("CIFAR-10", "cifar-10-batches-py/", lambda r: cifar_present(r, "cifar10"),
                      lambda r, **_: read_cifar(r, "cifar10"), lambda r: download_cifar(r, "cifar10")),
    "cifar100": Source("CIFAR-100", "cifar-100-python/", lambda r: cifar_present(r, "cifar100"),
                       lambda r, **_: read_cifar(r, "cifar100"), lambda r: download_cifar(r, "cifar100")),
    "flowers102": Source("Oxford Flowers 102", "flowers-102/{jpg/,imagelabels.mat,setid.mat}", flowers_present,
                         lambda r, skip_unreadable=False, **_: read_flowers102(r, skip_unreadable),
                         download_flowers102),
    "cats_vs_dogs": Source("Cats & Dogs (PetImages)", "PetImages/{Cat,Dog}/", petimages_present,
                           read_petimages, download_petimages, skip_unreadable=True),
    "image_folder": Source("Image folder", "train/<class>/*, test/<class>/*", None, None, None),
}


def load_source(source: str, root: str | Path, download: bool, skip_unreadable: bool | None = None,
                test_split: str = "test", **options: Any) -> RawSplits:
    """Read ``source`` from ``root``: image-folder layout if present, else the official format,
    downloading it first when allowed. Raises :class:`DatasetNotFoundError` naming the fix.
    ``skip_unreadable``: leave unreadable image files out (True) or raise naming them (False);
    None is the source's own rule (skip for Cats & Dogs, whose archive ships broken files)."""
    if source not in SOURCES:
        raise ValueError(f"dataset.source={source!r} is unknown; use one of {sorted(SOURCES)}")
    spec, root = SOURCES[source], Path(root).expanduser()
    skip = spec.skip_unreadable if skip_unreadable is None else bool(skip_unreadable)
    if test_split not in TEST_SPLITS:
        raise ValueError(f"dataset.test_split={test_split!r}: use one of {', '.join(TEST_SPLITS)}")
    if root.is_dir() and train_val_only(root):
        if test_split != "val":
            raise DatasetNotFoundError(
                f"{spec.display} at {root} has train/ and val/ but no test/: run with dataset.test_split=val to "
                f"test on val/ (then hold out a validation split of train/ with dataset.val_fraction=0.1 where "
                f"a run selects on one), or add a test/ folder")
        return read_image_folder(root, skip, test_split="val")
    if root.is_dir() and has_image_folder_layout(root):
        return read_image_folder(root, skip, test_split=test_split)
    if spec.present is None:  # the generic image folder has no official format
        raise not_found(spec.display, root, spec.expected)
    if not spec.present(root):
        if not download:
            raise not_found(spec.display, root, spec.expected)
        log.info("downloading %s to %s", spec.display, root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            spec.download(root)
        except Exception as err:  # network, HTTP, checksum, disk
            raise not_found(spec.display, root, spec.expected, cause=f"{type(err).__name__}: {err}") from err
        if not spec.present(root):
            raise not_found(spec.display, root, spec.expected, cause="the archive did not contain the expected files")
    return spec.read(root, skip_unreadable=skip, **options)
