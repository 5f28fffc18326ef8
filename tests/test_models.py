"""Backbones: the CIFAR stem matches its definition; heads; base weights from a file or the hub."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import assert_exact

from spa.models import apply_cifar_stem, create_backbone, load_model_file, save_model_file


@pytest.mark.numerics
def test_cifar_stem_is_avg_pooled_7x7_at_stride_1_without_maxpool(float64):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    original = model.conv1.weight.detach().clone()
    apply_cifar_stem(model)
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    # definition: 3x3 tap (r, c) = mean of the 2x2 window of the 7x7 kernel at rows 2r..2r+1, cols 2c..2c+1
    manual = torch.empty(original.shape[0], original.shape[1], 3, 3)
    for r in range(3):
        for c in range(3):
            manual[:, :, r, c] = original[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean(dim=(2, 3))
    assert_exact(conv.weight, manual)
    assert_exact(conv.weight, F.avg_pool2d(original, 2))
    assert isinstance(model.maxpool, nn.Identity)
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape[-2:] == (4, 4)            # 32 px: stride 1 stem, three stride-2 stages


def test_cifar_stem_on_a_deep_stem_sets_stride_1():
    model = timm.create_model("test_resnet", num_classes=3)
    weight = model.conv1[0].weight.detach().clone()
    apply_cifar_stem(model)
    assert model.conv1[0].stride == (1, 1) and torch.equal(model.conv1[0].weight, weight)
    assert isinstance(model.maxpool, nn.Identity)


def test_cifar_stem_refuses_non_resnets():
    with pytest.raises(ValueError, match="needs a ResNet"):
        create_backbone("test_vit", 3, cifar_stem=True, kwargs={"img_size": 32})


@pytest.mark.parametrize("name,kwargs", [("test_resnet", {}), ("test_vit", {"img_size": 32})])
def test_new_head_has_the_task_classes(name, kwargs):
    model, info = create_backbone(name, 7, kwargs=kwargs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert info.source == "none"


def test_saved_model_reloads_as_base_with_identical_features_and_a_new_head(tmp_path):
    torch.manual_seed(0)
    model, _ = create_backbone("test_resnet", 5, cifar_stem=True)
    path = save_model_file(model, tmp_path / "model.pt", timm_name="test_resnet", cifar_stem=True, kwargs={},
                           classes=list("abcde"))
    payload = load_model_file(path)                          # safe torch.load (weights_only)
    assert payload["classes"] == list("abcde")
    x = torch.randn(2, 3, 32, 32)
    same, info = create_backbone("test_resnet", 5, weights=str(path), cifar_stem=True, load_head=True)
    model.eval(), same.eval()
    assert torch.equal(model(x), same(x))
    assert info.source == "file" and len(info.sha256) == 64
    torch.manual_seed(1)
    transfer, _ = create_backbone("test_resnet", 3, weights=str(path), cifar_stem=True)
    transfer.eval()
    assert torch.equal(model.forward_features(x), transfer.forward_features(x))
    assert transfer(x).shape == (2, 3)


def test_incompatible_weights_name_the_fix(tmp_path):
    model, _ = create_backbone("test_resnet", 5, cifar_stem=True)
    path = save_model_file(model, tmp_path / "model.pt", timm_name="test_resnet", cifar_stem=True, kwargs={},
                           classes=list("abcde"))
    with pytest.raises(ValueError, match="backbone.cifar_stem=true"):
        create_backbone("test_resnet", 5, weights=str(path), cifar_stem=False)
    with pytest.raises(ValueError, match="do not fit"):
        create_backbone("resnet18", 5, weights=str(path), cifar_stem=True, kwargs={"layers": [1, 1, 1, 1]})
    with pytest.raises(FileNotFoundError, match="model.pt of a finished run"):
        create_backbone("test_resnet", 5, weights=str(tmp_path / "missing.pt"))


def test_unreachable_hub_names_the_fix(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("offline")
        return real(name, pretrained=False, **kwargs)
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="backbone.weights=PATH"):
        create_backbone("resnet50", 10, weights="pretrained", pretrained_tag="tv_in1k")
