"""SPLoPA, the block SPA: the update is the spec's sum of Kronecker products, prototypes are shared
within one model and counted once, the adapted model equals its fused one, layers the block does
not divide are left out by name, and a run trains it (unpruned; block pruning is not built yet)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from numerics import assert_exact

from spa import pipeline
from spa.adapters import adapter_layers, apply_adapter, fuse
from spa.adapters.block import PrototypeBank, SPLoPAConv2d, SPLoPALinear
from spa.metrics import count_parameters
from spa.saved import load_task, save_task
from spa.settings import SettingError


@pytest.mark.numerics
def test_the_update_is_the_sum_of_kronecker_products_of_positions_and_prototypes(float64):
    torch.manual_seed(0)
    bank = PrototypeBank(3, (2, 4), rank=2, init_range=0.5)
    layer = SPLoPALinear(nn.Linear(8, 6), bank)                 # 6 x 8 weight: 3 x 2 blocks of 2 x 4
    assert layer.B.shape == (3, 3, 2) and bank.C.shape == (3, 2, 2) and bank.R.shape == (3, 2, 4)
    expected = sum(torch.kron(layer.B[i], bank.C[i] @ bank.R[i]) for i in range(3))
    assert_exact(layer.delta(), expected)
    assert bank.C.abs().max() <= 0.5                             # C ~ U(±init_range)


def vit_with_splopa(shared: bool) -> nn.Module:
    model = timm.create_model("test_vit", num_classes=3)
    return apply_adapter(model, "splopa", num_prototypes=4, block_shape=(16, 16), prototype_rank=2, shared=shared)


def test_prototypes_are_shared_within_a_model_and_counted_once():
    shared, per_layer = vit_with_splopa(True), vit_with_splopa(False)
    layers = adapter_layers(shared)
    assert len(layers) == 6 * 4 and all(isinstance(m, SPLoPALinear) for m in layers.values())   # qkv, proj, fc1, fc2
    assert len({id(m.bank) for m in layers.values()}) == 1
    assert len({id(m.bank) for m in adapter_layers(per_layer).values()}) == 24
    # by hand: N·(n/16)·(m/16) per layer, N·r·(p + q) per bank, + biases, norms, head
    n, r = 4, 2
    blocks = 6 * (192 * 64 + 64 * 64 + 192 * 64 + 64 * 192) // (16 * 16)
    others = sum(p.numel() for name, p in shared.named_parameters()
                 if p.requires_grad and not name.endswith((".B", ".C", ".R")))
    prototype = n * r * (16 + 16)
    assert count_parameters(shared).trainable == n * blocks + prototype + others
    assert count_parameters(per_layer).trainable == n * blocks + 24 * prototype + others
    assert count_parameters(shared).deployable == sum(p.numel() for p in fuse(shared).parameters())


@pytest.mark.numerics
def test_the_adapted_model_equals_its_fused_one_in_train_and_eval_mode(float64):
    torch.manual_seed(0)
    model = vit_with_splopa(True)
    for layer in adapter_layers(model).values():
        nn.init.uniform_(layer.bank.C, -0.5, 0.5)               # a visible update
    x = torch.randn(2, 3, 32, 32)
    fused = fuse(model)
    assert not adapter_layers(fused)
    model.eval()
    fused.eval()
    assert_exact(model(x), fused(x))
    assert_exact(model(x), fused(x), what="the cached fused weight")


@pytest.mark.numerics
def test_pointwise_convs_are_adapted_and_undivided_layers_left_out_by_name(caplog, float64):
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 64, 1), nn.Conv2d(64, 24, 1))
    model.pretrained_cfg = {"classifier": "none"}
    apply_adapter(model, "splopa", num_prototypes=2, block_shape=(32, 32))
    assert isinstance(model[1], SPLoPAConv2d) and type(model[0]) is nn.Conv2d and type(model[2]) is nn.Conv2d
    assert "2 (24 x 64)" in caplog.text
    x = torch.randn(1, 3, 8, 8)
    assert_exact(model.eval()(x), fuse(model).eval()(x))
    lone = nn.Sequential(nn.Conv2d(24, 40, 1))
    lone.pretrained_cfg = {"classifier": "none"}
    with pytest.raises(ValueError, match=r"block sizes that divide them all: \[8\].*block_shape=\[8,8\]"):
        apply_adapter(lone, "splopa", block_shape=(32, 32))


def test_a_run_trains_splopa_and_channel_pruning_it_is_refused(compose_cfg):
    summary = pipeline.run(compose_cfg("adapter=splopa_r64", "backbone=test_vit", "adapter.options.block_shape=[16,16]",
                                       "train.epochs=1", "train.max_steps_per_epoch=2"))
    assert 0 < summary["params"]["trainable"] < summary["params"]["deployable"]
    assert summary["files"]["task.pt"] < summary["files"]["model.pt"]
    with pytest.raises(SettingError, match="cannot be channel-pruned.*pruning=block_movement"):
        pipeline.run(compose_cfg("adapter=splopa_r64", "backbone=test_vit", "pruning=taylor"))


@pytest.mark.numerics
def test_a_task_file_rebuilds_the_shared_prototypes(tmp_path, float64):
    torch.manual_seed(0)
    base = timm.create_model("test_vit", num_classes=3).eval()
    model = apply_adapter(timm.create_model("test_vit", num_classes=3), "splopa", num_prototypes=4,
                          block_shape=(16, 16))
    model.load_state_dict(base.state_dict(), strict=False)
    for layer in adapter_layers(model).values():
        nn.init.uniform_(layer.bank.C, -0.5, 0.5)
    save_task(model, tmp_path / "task.pt", adapter={"kind": "splopa", "options": {"num_prototypes": 4,
                                                                                "block_shape": [16, 16]}})
    loaded = load_task(base, tmp_path / "task.pt").eval()
    assert len({id(m.bank) for m in adapter_layers(loaded).values()}) == 1
    x = torch.randn(2, 3, 32, 32)
    assert_exact(loaded(x), model.eval()(x))


@pytest.mark.slow      # a full-size DeiT-S (22 M parameters, random weights)
@pytest.mark.numerics
def test_deit_small_with_splopa_r64_counts_as_by_hand_and_fuses():
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", num_classes=10)
    apply_adapter(model, "splopa", num_prototypes=64)
    layers = adapter_layers(model)
    assert len(layers) == 48 and len({id(m.bank) for m in layers.values()}) == 1
    # per block: qkv 1152 x 384, proj 384 x 384, fc1 1536 x 384, fc2 384 x 1536, in 32 x 32 blocks
    blocks = 12 * (36 * 12 + 12 * 12 + 48 * 12 + 12 * 48)
    others = sum(p.numel() for name, p in model.named_parameters()
                 if p.requires_grad and not name.endswith((".B", ".C", ".R")))
    tokens = 384 + 197 * 384        # class token and position embedding, trained with the adapters
    assert others == 64_906 + tokens    # biases, norms, head
    assert count_parameters(model).trainable == 64 * blocks + 64 * 2 * (32 + 32) + others == 1_476_234
    for layer in layers.values():
        nn.init.uniform_(layer.bank.C, -1e-2, 1e-2)
    x = torch.randn(1, 3, 224, 224).double()
    model.eval().double()                                  # fusing is exact: float64
    with torch.no_grad():
        assert_exact(model(x), fuse(model).eval()(x))


@pytest.mark.slow      # a full-size DeiT-S (22 M parameters, random weights)
@pytest.mark.numerics
def test_deit_small_with_splopa_r64_takes_a_block_movement_step_and_fuses_with_its_zeros():
    from spa.pruning.blocks import BlockPruner, Stage, attach_blocks, block_sums, pruned_parameters
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", num_classes=10)
    apply_adapter(model, "splopa", num_prototypes=64)
    assert len(attach_blocks(model, (32, 32), dense=False)) == 48
    pruner = BlockPruner(model, "movement")
    assert pruner.original_blocks == 12 * (36 * 12 + 12 * 12 + 48 * 12 + 12 * 48) == 20_736
    pruner.begin(Stage(1.0, 0.5, steps=1, initial_warmup=0, final_warmup=0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 7])
    nn.functional.cross_entropy(model.train()(x), y).backward()
    optimizer.step()
    pruner.on_step()                     # one step: the schedule's end, half of each matrix's blocks kept
    assert pruner.kept_blocks == 10_368
    learned = count_parameters(model).trainable - pruned_parameters(model)["learned"]
    assert learned == 1_476_234 - 64 * 10_368
    model.eval().double()                                  # fusing is exact: float64
    fused = fuse(model).eval()
    with torch.no_grad():
        assert_exact(model(x.double()), fused(x.double()))
    modules = dict(fused.named_modules())
    zero = sum(int((block_sums(modules[n].weight.abs(), (32, 32)) == 0).sum()) for n in adapter_layers(model))
    assert zero == 10_368
