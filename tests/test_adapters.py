"""Channel SPAs: the maths of docs/method.md §1, fusion, the trainable set, exact counts and task files.

Fused vs unfused outputs are exact in real arithmetic: compared in float64 (tests/numerics.py).
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
from numerics import assert_exact

from spa.adapters import SPLoRAConv2d, SPLoRALinear, SPPaRAConv2d, adapter_layers, apply_adapter, fuse
from spa.metrics import count_parameters
from spa.models import apply_cifar_stem, save_model_file
from spa.saved import load_task, save_task, switch_task

CONVS = {  # name: (in, out, kernel, stride, padding, dilation, groups, bias)
    "1x1": (8, 12, 1, 1, 0, 1, 1, False),
    "3x3": (8, 12, 3, 1, 1, 1, 1, True),
    "7x7-stride2": (3, 16, 7, 2, 3, 1, 1, False),
    "3x3-strided": (8, 12, 3, 2, 1, 1, 1, False),
    "3x3-grouped": (8, 12, 3, 1, 1, 1, 4, True),
    "3x3-depthwise": (8, 8, 3, 1, 1, 1, 8, False),
    "3x3-valid": (8, 12, 3, 1, 0, 1, 1, False),
    "3x3-dilated": (8, 12, 3, 1, 2, 2, 1, False),
    "5x5-pad1-stride2": (8, 12, 5, 2, 1, 1, 1, False),
}


def conv(name: str) -> nn.Conv2d:
    i, o, k, s, p, d, g, b = CONVS[name]
    torch.manual_seed(0)
    return nn.Conv2d(i, o, k, s, p, d, g, bias=b)


def adapters_of(layer, init_range=0.5):
    if isinstance(layer, nn.Linear):
        return [SPLoRALinear.from_module(layer, rank=3, init_range=init_range)]
    return [SPLoRAConv2d.from_module(layer, rank=3, init_range=init_range),
            SPPaRAConv2d.from_module(layer, init_range=init_range)]


def inputs(layer):
    torch.manual_seed(1)
    return torch.randn(4, 10) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 11, 11)


@pytest.mark.numerics
@pytest.mark.parametrize("name", list(CONVS) + ["linear"])
def test_converted_layer_equals_the_original_at_init_range_zero(name, float64):
    layer = nn.Linear(10, 6) if name == "linear" else conv(name)
    x = inputs(layer)
    for adapted in adapters_of(layer, init_range=0.0):
        for mode in (True, False):
            adapted.train(mode)
            assert_exact(adapted(x), layer(x), what=f"{type(adapted).__name__} train={mode}")


@pytest.mark.numerics
@pytest.mark.parametrize("name", list(CONVS) + ["linear"])
def test_low_memory_training_form_equals_fused_weight_and_plain_layer(name, float64):
    layer = nn.Linear(10, 6) if name == "linear" else conv(name)
    x = inputs(layer)
    for adapted in adapters_of(layer):
        dense = nn.functional.linear(x, adapted.fused_weight(), adapted.bias) if name == "linear" else \
            nn.functional.conv2d(x, adapted.fused_weight(), adapted.bias, adapted.stride, adapted.padding,
                                 adapted.dilation, adapted.groups)
        train_out = adapted.train()(x)
        eval_out = adapted.eval()(x)
        plain = adapted.to_module()
        assert type(plain) in (nn.Conv2d, nn.Linear)
        assert_exact(train_out, dense, what="training form")
        assert_exact(eval_out, dense, what="eval form")
        assert_exact(plain(x), dense, what="plain layer")
        assert not torch.allclose(dense, layer(x), atol=1e-3)     # the update is not negligible here


def test_eval_cache_is_reused_without_grad_and_bypassed_under_autograd():
    layer = SPLoRAConv2d.from_module(conv("3x3"), rank=2, init_range=0.5).eval()
    x = inputs(conv("3x3"))
    with torch.no_grad():
        layer(x)
        cached = layer._cache.weight
        layer(x)
        assert layer._cache.weight is cached                     # computed once per eval()
    layer(x).sum().backward()                                    # eval mode, autograd on
    assert layer.A.grad is not None and layer.A.grad.abs().sum() > 0
    layer.train()
    assert layer._cache.weight is None                           # dropped on train()


@pytest.mark.numerics
def test_update_sits_at_the_centre_tap_only(float64):
    adapted = SPLoRAConv2d.from_module(conv("7x7-stride2"), rank=2, init_range=0.5)
    delta = adapted.fused_weight() - adapted.weight
    assert_exact(delta[:, :, 3, 3], adapted.B @ adapted.A)
    delta[:, :, 3, 3] = 0
    assert delta.abs().max() == 0


def test_shapes_init_and_rank_fraction():
    layer = SPLoRAConv2d.from_module(conv("3x3-grouped"), rank=0.25)       # 25 % of 12 outputs
    assert layer.A.shape == (3, 2) and layer.B.shape == (12, 3)            # in = 8 / 4 groups
    assert layer.B.abs().max() <= 1e-4 and layer.A.abs().max() > 1e-3
    assert SPPaRAConv2d.from_module(conv("3x3-grouped")).P.shape == (12, 2)
    with pytest.raises(ValueError, match="odd square"):
        SPLoRAConv2d.from_module(nn.Conv2d(4, 4, (1, 3)))


def test_per_layer_learned_counts():
    lin = SPLoRALinear.from_module(nn.Linear(10, 6), rank=3)
    assert lin.learned_parameters() == 3 * (10 + 6) + 6
    c = SPLoRAConv2d.from_module(conv("3x3"), rank=3)
    assert c.learned_parameters() == 3 * (8 + 12) + 12
    c = SPLoRAConv2d.from_module(conv("3x3-grouped"), rank=3)
    assert c.learned_parameters() == 3 * (2 + 12) + 12
    p = SPPaRAConv2d.from_module(conv("3x3"))
    assert p.learned_parameters() == 12 * 8 + 12
    p = SPPaRAConv2d.from_module(conv("1x1"))
    assert p.learned_parameters() == 12 * 8


@pytest.mark.numerics
def test_optimizer_step_changes_adapters_not_base_and_refreshes_the_eval_cache():
    # zero_init_last=False: timm otherwise zeroes each block's last BN, whose conv then gets no gradient
    model = timm.create_model("test_resnet", num_classes=3, zero_init_last=False)
    apply_adapter(model, "splora", rank=2, init_range=1e-4)
    base = {n: m.weight.detach().clone() for n, m in adapter_layers(model).items()}
    factors = {n: m.A.detach().clone() for n, m in adapter_layers(model).items()}
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    before = model(x)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    for name, layer in adapter_layers(model).items():
        assert torch.equal(layer.weight, base[name])
        assert not torch.equal(layer.A, factors[name])
    model.eval()
    after = model(x)
    assert not torch.allclose(before, after)
    model.double()                                   # fusing is exact: checked in float64
    assert_exact(model(x.double()), fuse(model).eval()(x.double()))


@pytest.mark.numerics
@pytest.mark.parametrize("name,kwargs,kinds", [("test_resnet", {}, ["splora", "sppara"]),
                                                ("test_vit", {"img_size": 32}, ["splora"])])
def test_fuse_returns_a_plain_model_with_the_same_outputs(name, kwargs, kinds, float64):
    for kind in kinds:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=5, **kwargs)
        apply_adapter(model, kind, **({"rank": 4} if kind == "splora" else {}), init_range=0.05)
        x = torch.randn(2, 3, 32, 32)
        model.eval()
        fused = fuse(model)
        assert not adapter_layers(fused) and adapter_layers(model)
        assert all(type(m) is not SPLoRALinear for m in fused.modules())
        assert_exact(model(x), fused(x))
        counts = count_parameters(model)
        assert sum(p.numel() for p in fused.parameters()) == counts.deployable


def test_trainable_set_is_adapters_norms_biases_and_head():
    model = timm.create_model("test_vit", num_classes=5, img_size=32)
    apply_adapter(model, "splora", rank=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and "head.bias" in trainable
    assert "blocks.0.attn.qkv.A" in trainable and "blocks.0.attn.qkv.bias" in trainable
    assert "blocks.0.norm1.weight" in trainable and {"cls_token", "pos_embed"} <= trainable   # a ViT's tokens
    assert "blocks.0.attn.qkv.weight" not in trainable and "patch_embed.proj.weight" not in trainable
    assert type(model.patch_embed.proj) is nn.Conv2d and type(model.head) is nn.Linear


def resnet50_cifar(num_classes=10):
    model = timm.create_model("resnet50", num_classes=num_classes)
    return apply_cifar_stem(model)


@pytest.mark.parametrize("adapter,expected", [("finetune", 23_520_842), ("splora_r32", 1_644_522),
                                              ("splora_r8", 466_338)])
def test_table1_learned_parameter_counts_of_resnet50(adapter, expected):
    model = resnet50_cifar()
    if adapter == "finetune":
        apply_adapter(model, "finetune")
    else:
        apply_adapter(model, "splora", rank=int(adapter.split("_r")[1]))
    assert count_parameters(model).learned == expected


def trained_task(base: nn.Module, classes: int, kind: str, seed: int) -> nn.Module:
    """An adapted copy of ``base`` whose task tensors (adapters, BN, head) moved as training would."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    model.reset_classifier(classes)
    apply_adapter(model, kind, init_range=0.05)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.numerics
def test_task_files_rebuild_outputs_switch_tasks_and_share_the_base(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model("test_resnet", num_classes=1000).eval()
    x = torch.randn(2, 3, 32, 32)
    base_out = base(x)
    tasks = {"a": trained_task(base, 3, "splora", 1), "b": trained_task(base, 3, "splora", 2),
             "c": trained_task(base, 4, "sppara", 3)}
    expected = {k: m(x) for k, m in tasks.items()}
    paths = {k: save_task(m, tmp_path / f"{k}.pt", adapter={"kind": "splora" if k != "c" else "sppara",
                                                             "options": {"init_range": 0.05}})
             for k, m in tasks.items()}
    for key, path in paths.items():
        rebuilt = load_task(base, path).eval()
        assert torch.equal(rebuilt(x), expected[key]), key
        assert rebuilt.conv1[0].weight.data_ptr() == base.conv1[0].weight.data_ptr()   # shared, not copied
    model = load_task(base, paths["a"]).eval()
    pointer = model.layer1[0].conv1.weight.data_ptr()
    switch_task(model, paths["b"])
    assert torch.equal(model(x), expected["b"])
    switch_task(model, paths["a"])
    assert torch.equal(model(x), expected["a"])
    assert model.layer1[0].conv1.weight.data_ptr() == pointer                          # base never reloaded
    with pytest.raises(ValueError, match="does not fit"):
        switch_task(model, paths["c"])                                                # other adapter, other head
    assert torch.equal(base(x), base_out)                                            # the base is untouched


def test_resnet50_splora_r8_task_file_is_at_most_a_40th_of_the_model_file(tmp_path):
    model = resnet50_cifar()
    model_file = save_model_file(model, tmp_path / "model.pt", timm_name="resnet50", cifar_stem=True, kwargs={},
                                 classes=[str(i) for i in range(10)])
    apply_adapter(model, "splora", rank=8)
    task_file = save_task(model, tmp_path / "task.pt", adapter={"kind": "splora", "options": {"rank": 8}})
    ratio = model_file.stat().st_size / task_file.stat().st_size
    assert ratio >= 40, f"task file is 1/{ratio:.1f} of the model file"


def test_parameter_table_counts_and_file_sizes():
    from spa.reporting.params import AdapterSpec, BackboneSpec, parameter_table
    table = parameter_table(
        backbones=(BackboneSpec("r", "test_resnet", 3), BackboneSpec("v", "test_vit", 3, kwargs=(("img_size", 32),))),
        adapters=(AdapterSpec("finetune", "finetune"), AdapterSpec("splora_r2", "splora", (("rank", 2),)),
                  AdapterSpec("sppara", "sppara")))
    assert list(zip(table.backbone, table.adapter)) == [("r", "finetune"), ("r", "splora_r2"), ("r", "sppara"),
                                                       ("v", "finetune"), ("v", "splora_r2")]   # SPPaRA: convs only
    ft = table.iloc[0]
    assert ft.learned == ft.total == ft.deployable and ft.model_to_task == 1.0
    lora = table.iloc[1]
    assert lora.learned < lora.deployable < lora.total and lora.model_to_task > 1.5


@pytest.mark.numerics
def test_splora_convs_train_through_the_cheaper_form_with_the_same_gradients(monkeypatch, float64):
    from spa.adapters import layers
    assert not layers.branch_is_cheaper(32, 64, 256)             # early 1×1 conv: W + BA is cheaper
    assert layers.branch_is_cheaper(8, 512, 2048)                  # late 1×1 conv: the thin branch is
    assert layers.branch_is_cheaper(32, 64, 64, kernel_area=9)     # a 3×3 conv's weight gradient is 9× dearer
    torch.manual_seed(0)
    for conv in (nn.Conv2d(6, 12, 1), nn.Conv2d(6, 12, 3, stride=2, padding=1)):
        layer = SPLoRAConv2d.from_module(conv, rank=2, init_range=0.5).train()
        x = torch.randn(2, 6, 9, 9)

        def grads(force: bool | None, layer=layer, x=x):
            if force is not None:
                monkeypatch.setattr(layers, "branch_is_cheaper", lambda *a, **k: force)
            inp = x.clone().requires_grad_(True)
            out = layer(inp)
            out.backward(torch.ones_like(out))
            got = [out.detach()] + [t.grad.clone() for t in (inp, layer.A, layer.B, layer.bias)]
            for t in (layer.A, layer.B, layer.bias):
                t.grad = None
            return got
        branch, fused = grads(True), grads(False)
        for a, b in zip(branch, fused):
            assert_exact(a, b)
        assert layer.weight.grad is None                           # the frozen weight learns nothing either way


def test_a_tensor_shared_by_two_layers_is_counted_once():
    """Two positions sharing one adapter tensor (tied blocks, SPLoPA's prototypes, Pear's shared
    adapters) store it once: the counts go by tensor identity and agree with the fused model."""
    model = timm.create_model("test_vit", num_classes=10)
    apply_adapter(model, "splora", rank=8)
    untied = count_parameters(model)
    first, second = model.blocks[0].attn.qkv, model.blocks[1].attn.qkv
    second.A, second.B = first.A, first.B
    tied = count_parameters(model)
    shared = first.A.numel() + first.B.numel()
    assert untied.total - tied.total == untied.trainable - tied.trainable == shared
    assert tied.deployable == untied.deployable == sum(p.numel() for p in fuse(model).parameters())


@pytest.mark.numerics
def test_an_adapter_layer_prunes_its_own_rows_and_columns(float64):
    """The pruner asks the layer (keep_rows / keep_cols); the layer keeps the matching slices of W,
    of its adapter tensors and of the bias, and the kept part computes what it computed before."""
    torch.manual_seed(0)
    layer = SPLoRALinear.from_module(nn.Linear(6, 5), rank=2, init_range=0.5)
    full = layer.fused_weight().detach().clone()
    layer.keep_rows([0, 2, 4])
    layer.keep_cols([1, 3, 5])
    assert (layer.A.shape, layer.B.shape, layer.bias.shape) == ((2, 3), (3, 2), (3,))
    assert_exact(layer.fused_weight(), full[[0, 2, 4]][:, [1, 3, 5]])
    assert layer.A.requires_grad and layer.B.requires_grad and not layer.weight.requires_grad
    conv = SPPaRAConv2d.from_module(nn.Conv2d(4, 3, 3, padding=1), init_range=0.5)
    conv.keep_rows([1, 2])
    conv.keep_cols([0, 3])
    assert conv.P.shape == (2, 2) and conv.weight.shape == (2, 2, 3, 3)
