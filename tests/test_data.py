"""The image-folder and official-format readers read what they should; subsets and splits are exact."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from spa.data import (
    SOURCES,
    DatasetNotFoundError,
    UnreadableImagesError,
    build_datasets,
    build_transforms,
    fake,
    load_source,
    readable,
)
from spa.data.datasets import split_validation, subsample


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The readability cache of these tests goes to tmp_path, not ~/.cache/spa."""
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path / "cache"))


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
    monkeypatch.setitem(SOURCES, "flowers102",
                        type(spec)(spec.display, spec.expected, spec.present, spec.read, offline))
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
        with pytest.raises(DatasetNotFoundError, match="download failed"):  # checksum mismatch
            load_source("cifar10", tmp_path / "other", download=True)
    finally:
        server.shutdown()
        server.server_close()


def _folder_with_broken_images(tmp_path: Path) -> Path:
    """2 classes x (3 train + 2 test) good PNGs, plus text in a .png and a JPEG cut in half: 12 files."""
    root = fake.write_image_folder(tmp_path / "data", ["ant", "bee"], n_train=3, n_test=2)
    fake.write_broken_image(root / "train" / "ant" / "text.png", "text")
    fake.write_broken_image(root / "test" / "bee" / "cut.jpg", "truncated")
    return root


def test_unreadable_images_stop_the_build_naming_them_or_are_skipped_and_counted(tmp_path):
    from PIL import Image

    root = _folder_with_broken_images(tmp_path)
    with Image.open(root / "test" / "bee" / "cut.jpg") as img:
        img.verify()  # verify() alone lets the truncated JPEG through
    with pytest.raises(UnreadableImagesError) as err:
        build_datasets("image_folder", root, image_size=32)
    text = str(err.value)
    assert text.startswith(f"2 of 12 image files under {root} cannot be read: ")
    assert "train/ant/text.png (cannot identify image file)" in text
    assert "test/bee/cut.jpg (image file is truncated" in text
    assert "dataset.skip_unreadable=true" in text
    data = build_datasets("image_folder", root, image_size=32, skip_unreadable=True)
    assert data.sizes() == {"train": 6, "val": 0, "test": 4}
    assert data.stats == {"unreadable_removed": 2, "converted_to_rgb": 0, "val_split": "none"}
    assert all(x.shape == (3, 32, 32) for split in (data.train, data.test) for x, _ in split)  # no crash mid-epoch
    # Cats & Dogs keeps skipping by default, in either layout, through the same rule; false stops it
    assert load_source("cats_vs_dogs", root, download=False).stats["unreadable_removed"] == 2
    with pytest.raises(UnreadableImagesError, match="2 of 12"):
        load_source("cats_vs_dogs", root, download=False, skip_unreadable=False)
    fake.write_petimages(tmp_path / "pets", per_class=3, n_unreadable=1, n_gray=0)
    with pytest.raises(UnreadableImagesError, match="Cat/3.jpg"):
        load_source("cats_vs_dogs", tmp_path / "pets", download=False, split_seed=0, skip_unreadable=False)


def test_many_unreadable_files_are_listed_first_few_and_counted(tmp_path):
    root = fake.write_image_folder(tmp_path / "data", ["ant"], n_train=1, n_test=1)
    for i in range(8):
        fake.write_broken_image(root / "train" / "ant" / f"bad{i}.png")
    with pytest.raises(UnreadableImagesError) as err:
        load_source("image_folder", root, download=False)
    assert str(err.value).count("(cannot identify image file)") == readable.SHOWN and " and 3 more." in str(err.value)


def test_a_second_build_reuses_the_cached_check(tmp_path, monkeypatch):
    from PIL import Image

    root = _folder_with_broken_images(tmp_path)
    checked, opened = [], []
    check, open_ = readable.check_image, Image.open
    monkeypatch.setattr(readable, "check_image", lambda path: checked.append(Path(path).name) or check(path))
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or open_(*a, **k))
    build_datasets("image_folder", root, skip_unreadable=True)
    assert len(checked) == 12 and len(opened) == 12
    assert len(list((tmp_path / "cache" / "readable").glob("*.json"))) == 1
    checked.clear(), opened.clear()
    again = build_datasets("image_folder", root, skip_unreadable=True)
    assert checked == [] and opened == [] and again.stats["unreadable_removed"] == 2  # nothing opened, same record
    changed = root / "train" / "bee" / "00001.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    build_datasets("image_folder", root, skip_unreadable=True)
    assert checked == ["00001.png"]  # only the changed file is checked again


def test_the_check_works_without_a_writable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPA_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be created
    root = _folder_with_broken_images(tmp_path)
    assert build_datasets("image_folder", root, skip_unreadable=True).stats["unreadable_removed"] == 2
    monkeypatch.delenv("SPA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert readable.cache_dir() == tmp_path / "xdg" / "spa"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert readable.cache_dir() == Path.home() / ".cache" / "spa"


def _with_val(root: Path, test: bool = True) -> Path:
    """An image folder with train/, val/ (3 per class) and, where ``test``, test/."""
    import shutil
    fake.write_image_folder(root, ["ant", "bee"], n_train=6, n_test=2)
    for name in ("ant", "bee"):
        (root / "val" / name).mkdir(parents=True)
        for i, src in enumerate(sorted((root / "train" / name).iterdir())[:3]):
            shutil.copy(src, root / "val" / name / f"v{i}.png")
    if not test:
        shutil.rmtree(root / "test")
    return root


def test_an_image_folders_val_is_its_validation_split_and_the_log_says_so(tmp_path, caplog):
    """A root with train/, val/ and test/ once logged 'val': 0 and never read val/."""
    root = _with_val(tmp_path / "data")
    with caplog.at_level("INFO", logger="spa.data.datasets"):
        data = build_datasets("image_folder", root, val_fraction=0.25)
    assert data.sizes() == {"train": 12, "val": 6, "test": 4}          # all of train kept: val/ is the split
    assert all("/val/" in item for item, _ in data.val.samples) and data.stats["val_split"] == "val/"
    assert "val_fraction=0.25 is not used" in caplog.text
    plain = build_datasets("image_folder", tmp_path / "data", val_fraction=0.0)
    assert plain.sizes()["val"] == 6
    no_val = fake.write_image_folder(tmp_path / "plain", ["ant", "bee"], n_train=6, n_test=2)
    held_out = build_datasets("image_folder", no_val, val_fraction=0.5)
    assert held_out.sizes() == {"train": 6, "val": 6, "test": 4} and held_out.stats["val_split"] == \
        "val_fraction=0.5 of train"
    assert build_datasets("image_folder", no_val).stats["val_split"] == "none"


def test_a_root_with_train_and_val_only_names_the_fix_and_tests_on_val_when_asked(tmp_path):
    root = _with_val(tmp_path / "data", test=False)
    with pytest.raises(DatasetNotFoundError, match="no test/: run with dataset.test_split=val"):
        build_datasets("image_folder", root)
    data = build_datasets("image_folder", root, test_split="val", val_fraction=0.5)
    assert data.sizes() == {"train": 6, "val": 6, "test": 6}
    assert all("/val/" in item for item, _ in data.test.samples)
    assert all("/train/" in item for item, _ in data.val.samples)     # validation held out of train/
    with pytest.raises(ValueError, match="dataset.test_split='dev'"):
        build_datasets("image_folder", root, test_split="dev")
