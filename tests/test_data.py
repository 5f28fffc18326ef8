"""The image-folder and official-format readers read what they should; subsets and splits are exact."""
from __future__ import annotations

from collections import Counter
from urllib.error import URLError

import numpy as np
import pytest
import torch

from spa.data import DatasetNotFoundError, SOURCES, build_datasets, build_transforms, load_source
from spa.data import fake
from spa.data.datasets import split_validation, subsample


def test_image_folder_layout_is_detected_for_any_source(image_folder):
    for source in ("cifar10", "cats_vs_dogs", "image_folder"):
        raw = load_source(source, image_folder, download=False)
        assert raw.layout == "image_folder"
        assert raw.classes == ["ant", "bee", "cat", "dog"]
        assert Counter(label for _, label in raw.train) == {0: 12, 1: 12, 2: 12, 3: 12}
        assert Counter(label for _, label in raw.test) == {0: 4, 1: 4, 2: 4, 3: 4}
    path, label = raw.train[12]
    assert "/train/bee/" in path and label == 1


def test_cifar10_official_pickles(tmp_path):
    fake.write_cifar(tmp_path, "cifar10", per_batch=20)
    raw = load_source("cifar10", tmp_path, download=False)
    assert (len(raw.train), len(raw.test), len(raw.classes)) == (100, 20, 10)
    image, label = raw.train[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label < 10
    # the arrays are the images that were written (CHW rows -> HWC)
    assert np.array_equal(raw.train[0][0], fake.class_image(label, 1000))
    data = build_datasets("cifar10", tmp_path, image_size=32, transform="cifar")
    x, y = data.test[3]
    assert x.shape == (3, 32, 32) and y == raw.test[3][1]


def test_cifar100_official_pickles(tmp_path):
    fake.write_cifar(tmp_path, "cifar100", per_batch=10)
    raw = load_source("cifar100", tmp_path, download=False)
    assert (len(raw.train), len(raw.test), len(raw.classes)) == (50, 10, 100)


def test_flowers102_train_is_train_plus_val(tmp_path):
    fake.write_flowers102(tmp_path, n_classes=3, per_split=2)
    raw = load_source("flowers102", tmp_path, download=False)
    assert (len(raw.train), len(raw.test), len(raw.classes)) == (12, 6, 3)
    assert Counter(label for _, label in raw.train) == {0: 4, 1: 4, 2: 4}   # 1-based labels -> 0-based
    assert all(p.endswith(".jpg") for p, _ in raw.train)


def test_petimages_drops_unreadable_converts_grey_and_splits_seeded(tmp_path):
    fake.write_petimages(tmp_path, per_class=10, n_unreadable=2, n_gray=1)
    raw = load_source("cats_vs_dogs", tmp_path, download=False, split_seed=0)
    assert raw.stats == {"unreadable_removed": 4, "converted_to_rgb": 2}
    assert raw.classes == ["cat", "dog"]
    assert (len(raw.train), len(raw.test)) == (14, 6)          # 70/30 of the 20 readable images
    again = load_source("cats_vs_dogs", tmp_path, download=False, split_seed=0)
    assert again.train == raw.train                              # deterministic (and the index is cached)
    other = load_source("cats_vs_dogs", tmp_path, download=False, split_seed=1)
    assert other.train != raw.train and sorted(other.train) != sorted(raw.train)
    short = load_source("cats_vs_dogs", tmp_path, download=False, split_seed=0, train_size=5, test_size=3)
    assert short.train == raw.train[:5] and short.test == raw.test[:3]
    data = build_datasets("cats_vs_dogs", tmp_path, image_size=24, transform="imagenet")
    grey = next(i for i, (p, _) in enumerate(data.train.samples) if p.endswith("/0.jpg"))
    assert data.train[grey][0].shape == (3, 24, 24)             # greyscale image loaded as RGB


def test_class_subset_relabels_in_given_order(image_folder):
    data = build_datasets("image_folder", image_folder, classes=["dog", 1], image_size=32)
    assert data.classes == ["dog", "bee"]
    assert Counter(data.train.targets) == {0: 12, 1: 12}
    assert all("/dog/" in p for p, y in data.train.samples if y == 0)
    with pytest.raises(ValueError, match="not a class"):
        build_datasets("image_folder", image_folder, classes=["emu"])


def test_fraction_max_per_class_and_validation_split(image_folder):
    data = build_datasets("image_folder", image_folder, train_fraction=0.5, val_fraction=0.25, image_size=32)
    assert Counter(data.train.targets) == {c: 4 for c in range(4)}        # 6 per class, 2 held out
    assert Counter(data.val.targets) == {c: 2 for c in range(4)}
    assert not {p for p, _ in data.train.samples} & {p for p, _ in data.val.samples}
    again = build_datasets("image_folder", image_folder, train_fraction=0.5, val_fraction=0.25, image_size=32)
    assert again.val.samples == data.val.samples
    capped = build_datasets("image_folder", image_folder, max_per_class=3, test_max_per_class=2)
    assert capped.sizes() == {"train": 12, "val": 0, "test": 8}
    with pytest.raises(ValueError, match="train_fraction"):
        subsample([("a", 0)], 0, fraction=0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation([("a", 0)], 1.0, 0)


def test_missing_data_names_path_env_var_and_download_flag(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_source("cifar10", missing, download=False)
    text = str(err.value)
    assert str(missing) in text and "SPA_DATA_DIR" in text and "dataset.download=true" in text


def test_failed_download_gives_the_same_clear_error(tmp_path, monkeypatch):
    def offline(root):
        raise URLError("no network")
    spec = SOURCES["flowers102"]
    monkeypatch.setitem(SOURCES, "flowers102", type(spec)(spec.display, spec.expected, spec.present, spec.read, offline))
    with pytest.raises(DatasetNotFoundError, match="download failed: URLError"):
        load_source("flowers102", tmp_path / "f", download=True)


@pytest.mark.parametrize("style,size", [("cifar", 32), ("imagenet", 64)])
def test_transforms_produce_normalised_tensors_of_the_asked_size(style, size):
    from PIL import Image
    train_tf, test_tf = build_transforms(style, size)
    image = Image.fromarray(fake.class_image(1, 0, size=80))
    for tf in (train_tf, test_tf):
        x = tf(image)
        assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert abs(float(test_tf(image).mean())) < 5
    with pytest.raises(ValueError, match="dataset.transform"):
        build_transforms("bogus", 32)


def test_download_path_fetches_checks_and_extracts_the_archive(tmp_path, monkeypatch):
    """The real download code (torchvision's fetch + MD5 check + extraction), fed by a throwaway
    HTTP server on 127.0.0.1 (no network leaves the machine)."""
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading
    from spa.data import sources
    fake.write_cifar(tmp_path / "src", "cifar10", per_batch=5)
    (tmp_path / "www").mkdir()
    archive = tmp_path / "www" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    try:
        monkeypatch.setitem(sources.CIFAR_ARCHIVES, "cifar10", (url, md5, "cifar-10-batches-py"))
        raw = load_source("cifar10", tmp_path / "data", download=True)
        assert (len(raw.train), len(raw.test)) == (25, 5)
        monkeypatch.setitem(sources.CIFAR_ARCHIVES, "cifar10", (url, "0" * 32, "cifar-10-batches-py"))
        with pytest.raises(DatasetNotFoundError, match="download failed"):   # checksum mismatch
            load_source("cifar10", tmp_path / "other", download=True)
    finally:
        server.shutdown()
        server.server_close()
