"""Shared fixtures: fake data in every format, and configs composed through Hydra's compose API."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from spa import config_dir
from spa.data import fake

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """4 classes, 12 train and 4 test 32-px PNGs per class, in image-folder layout."""
    return fake.write_image_folder(tmp_path_factory.mktemp("folder"), CLASSES, n_train=12, n_test=4)


@pytest.fixture
def compose_cfg(tmp_path, image_folder) -> Callable[..., DictConfig]:
    """compose_cfg(*overrides): the run config with results in tmp_path and tiny, fast defaults."""
    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [f"paths.results_dir={tmp_path / 'results'}"]
        if tiny:
            base += ["dataset=image_folder", f"dataset.root={image_folder}", "dataset.image_size=32",
                     "dataset.transform=cifar", "backbone=test_resnet", "train.epochs=2", "train.batch_size=8",
                     "train.eval_batch_size=32", "device=cpu", "exp_name=test"]
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose("config", overrides=base + list(overrides))
    return _compose


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir(tmp_path_factory):
    """The readability cache of built data sets (``spa.data.readable``) goes to a temp folder, not ~/.cache."""
    previous = os.environ.get("SPA_CACHE_DIR")
    os.environ["SPA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("SPA_CACHE_DIR", None)
    else:
        os.environ["SPA_CACHE_DIR"] = previous


@pytest.fixture
def float64():
    """Tensors and modules made inside the test default to float64 (tests/numerics.py: exact operations
    are compared in float64, where no CPU kernel set's rounding can reach the tolerance)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


def pytest_report_header(config):
    """Which CPU kernels this run uses (tests/numerics.py: tolerances must hold for every set)."""
    from spa.utils import machine_record
    machine = machine_record()
    return (f"kernels: torch {machine['cpu_capability']}, oneDNN max ISA {machine['onednn_max_cpu_isa'] or 'the CPU'}"
            f"; {machine['threads']} threads; {machine['cpu']}")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip (with the reason) where CUDA is missing."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
