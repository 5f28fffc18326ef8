"""The real backbones: ResNet-50 (CIFAR stem) with every criterion and learner, DeiT-S/16 with
weight and Taylor, one pruning step each on random data. Marked slow (about a minute on 2 cores)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from spa.adapters import apply_adapter
from spa.data import normalization
from spa.models import apply_cifar_stem
from spa.pruning.importance import CRITERIA
from spa.pruning.lrp import input_bounds
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, count_macs

PAPER_MACS_RESNET50_CIFAR = 1304.7e6     # docs/method.md §4: unpruned FLOPs (MACs), CIFAR stem, 32 x 32


def resnet50_cifar() -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_cifar_stem(timm.create_model("resnet50", num_classes=10))


def test_resnet50_macs_match_the_paper_within_one_percent():
    assert count_macs(resnet50_cifar(), (32, 32)) == pytest.approx(PAPER_MACS_RESNET50_CIFAR, rel=0.01)


def criterion(name: str):
    return CRITERIA[name](*input_bounds(*normalization("cifar"))) if name == "lrp" else CRITERIA[name]()


def one_step(model, size, name):
    data = DataLoader(TensorDataset(torch.randn(8, 3, size, size), torch.randint(0, 10, (8,))), batch_size=4)
    session = PruningSession(model, torch.zeros(1, 3, size, size))
    plan = Plan(session.original_filters, 0.05, 0.05)
    dense = count_macs(model, (size, size))
    result = session.step(1, plan, criterion(name), data, torch.device("cpu"))
    assert result.removed_filters == plan.budget(1, session.original_filters)
    assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert count_macs(model, (size, size)) < dense
    return session


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["finetune", "splora_r8", "sppara"])
@pytest.mark.parametrize("name", ["weight", "gradient", "taylor", "lrp"])
def test_resnet50_every_criterion_every_learner(adapter, name):
    model = resnet50_cifar()
    apply_adapter(model, *(("splora",) if adapter == "splora_r8" else (adapter,)),
                  **({"rank": 8} if adapter == "splora_r8" else {}))
    session = one_step(model, 32, name)
    assert session.original_filters == 26_560 and session.kept_filters == 25_232      # minus 5 %


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["finetune", "splora_r8"])
@pytest.mark.parametrize("name", ["weight", "taylor"])
def test_deit_small_weight_and_taylor(adapter, name):
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", num_classes=10)
    apply_adapter(model, *(("splora",) if adapter == "splora_r8" else (adapter,)),
                  **({"rank": 8} if adapter == "splora_r8" else {}))
    one_step(model, 224, name)
