"""The packaged ImageNet weights are really pretrained: a linear probe on frozen features of the real
CIFAR-10 subset separates them widely from a random init of the same network (slow: ~1 minute)."""
from __future__ import annotations

import pytest
from scripts_path import load_script

from spa import repo_root

DATA = repo_root().parent / "shared" / "data" / "cifar10-subset"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/cifar10-subset (the real CIFAR-10 subset)")
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenetv2_100"])
def test_a_linear_probe_separates_imagenet_features_from_random_ones(backbone):
    rows = {r["weights"].split(" ")[0]: r for r in load_script("probe").probe(backbone, DATA, 224)}
    assert rows["ImageNet"]["test_images"] == 500 and rows["ImageNet"]["train_images"] == 1000
    assert rows["ImageNet"]["test_top1"] >= 70.0, rows
    assert rows["random"]["test_top1"] <= 45.0, rows
