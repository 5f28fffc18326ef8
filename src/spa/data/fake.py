"""Tiny fake data sets in every on-disk format we read, for offline tests.

Each class gets its own colour and stripe direction, so a tiny network can learn it quickly.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, index: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """An HWC uint8 image whose colour and stripes depend on ``label`` (with per-image noise)."""
    rng = np.random.default_rng(seed * 100_003 + label * 1_009 + index)
    hue = np.array([(label * 67) % 256, (label * 139 + 80) % 256, (label * 23 + 160) % 256], dtype=np.float32)
    grid = np.arange(size, dtype=np.float32)
    stripes = np.sin((grid[:, None] * (label % 3 + 1) + grid[None, :] * (label // 3 % 3)) * 0.6)
    image = hue[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(root: str | Path, classes: list[str], n_train: int, n_test: int,
                       size: int = 32, ext: str = "png") -> Path:
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(label, i + (0 if split == "train" else 10_000), size)).save(
                    folder / f"{i:05d}.{ext}"
                )
    return root


def _cifar_batch(labels: list[int], offset: int, label_key: str) -> dict:
    data = np.stack([class_image(lbl, offset + i).transpose(2, 0, 1).reshape(-1) for i, lbl in enumerate(labels)])
    return {"data": data, label_key: labels}


def write_cifar(root: str | Path, variant: str = "cifar10", per_batch: int = 20) -> Path:
    """The official python-pickle layout, with ``per_batch`` images per batch file."""
    root = Path(root)
    n_classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(0)
    dump = lambda obj, path: path.write_bytes(pickle.dumps(obj))  # noqa: E731
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for b in range(1, 6):
            dump(
                _cifar_batch(rng.integers(0, n_classes, per_batch).tolist(), b * 1000, "labels"),
                folder / f"data_batch_{b}",
            )
        dump(_cifar_batch(rng.integers(0, n_classes, per_batch).tolist(), 9000, "labels"), folder / "test_batch")
        dump({"label_names": [f"class{i}" for i in range(n_classes)]}, folder / "batches.meta")
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(_cifar_batch(rng.integers(0, n_classes, per_batch * 5).tolist(), 0, "fine_labels"), folder / "train")
        dump(_cifar_batch(rng.integers(0, n_classes, per_batch).tolist(), 9000, "fine_labels"), folder / "test")
        dump({"fine_label_names": [f"class{i}" for i in range(n_classes)]}, folder / "meta")
    return root


def write_flowers102(root: str | Path, n_classes: int = 3, per_split: int = 2, size: int = 40) -> Path:
    """``flowers-102/{jpg/, imagelabels.mat, setid.mat}`` with 1-based ids and labels."""
    from scipy.io import savemat

    base = Path(root) / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for label in range(n_classes):
        for key in ids:
            for _ in range(per_split):
                image_id += 1
                labels.append(label + 1)
                ids[key].append(image_id)
                Image.fromarray(class_image(label, image_id, size)).save(base / "jpg" / f"image_{image_id:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(base / "setid.mat", {k: np.array([v]) for k, v in ids.items()})
    return Path(root)


def write_petimages(
    root: str | Path, per_class: int = 10, n_unreadable: int = 1, n_gray: int = 1, size: int = 40
) -> Path:
    """``PetImages/{Cat,Dog}/N.jpg`` with some broken files and some greyscale images, as the real archive."""
    base = Path(root) / "PetImages"
    for label, name in enumerate(("Cat", "Dog")):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(class_image(label, i, size))
            if i < n_gray:
                img = img.convert("L")
            img.save(folder / f"{i}.jpg")
        for j in range(n_unreadable):
            (folder / f"{per_class + j}.jpg").write_bytes(b"not a jpeg")
    return Path(root)


def write_broken_image(path: str | Path, kind: str = "text", size: int = 64) -> Path:
    """A file PIL cannot read: ``text`` (text under an image name) or ``truncated`` (a JPEG cut in half,
    which still opens and passes ``verify()``; only a decode finds it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text("this is not an image\n")
    else:
        buffer = io.BytesIO()
        Image.fromarray(class_image(0, 0, size)).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path
