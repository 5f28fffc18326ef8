"""Block pruning (spa.pruning.blocks): masks over the blocks of SPLoPA's / fine-tuning's matrices,
the cubic schedule, the three methods, and runs through the pipeline."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import assert_exact

from spa import pipeline
from spa.adapters import adapter_layers, apply_adapter, fuse
from spa.metrics import count_parameters
from spa.models import load_model_file
from spa.pruning.blocks import (
    BlockDenseLinear,
    BlockPruner,
    Stage,
    attach_blocks,
    block_layers,
    block_sums,
    cubic,
    empty_lines,
    pruned_parameters,
    stage_score_lr,
)
from spa.pruning.session import count_macs
from spa.records import RunDir
from spa.saved import load_task
from spa.settings import SettingError


def _vit(kind: str = "splopa") -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    if kind == "splopa":
        apply_adapter(model, "splopa", num_prototypes=4, block_shape=(16, 16))
    return model


def _train(model: nn.Module, pruner: BlockPruner, steps: int, lr: float = 0.05) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.on_step()


def test_the_cubic_schedule_holds_ramps_and_holds():
    values = [cubic(s, 10, 1.0, 0.1, initial_warmup=2, final_warmup=3) for s in range(11)]
    assert values[:3] == [1.0, 1.0, 0.1 + 0.9 * (1 - 0 / 5) ** 3]
    assert values[2] == pytest.approx(1.0) and values[3] == pytest.approx(0.1 + 0.9 * 0.8 ** 3)
    assert values[7:] == [0.1] * 4
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_block_sums_and_mask_expansion_follow_the_blocks():
    m = torch.arange(32.0).reshape(4, 8)
    sums = block_sums(m, (2, 4))
    assert sums.shape == (2, 2) and sums[0, 1] == m[:2, 4:].sum() and sums[1, 0] == m[2:, :4].sum()


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_topk_methods_reach_the_density_per_matrix_and_pruned_blocks_are_zero_when_fused(method):
    model = _vit()
    names = attach_blocks(model, (16, 16), dense=False)
    assert set(names) == set(adapter_layers(model))
    pruner = BlockPruner(model, method)
    pruner.begin(Stage(1.0, 0.5, steps=6, initial_warmup=1, final_warmup=2))
    assert pruner.density == 1.0
    _train(model, pruner, 6)
    for layer in block_layers(model).values():
        assert layer.block_mask.sum().item() == round(0.5 * layer.block_mask.numel())
    assert pruner.density == 0.5
    if method == "movement":    # scores are the accumulated -W'·dL/dW' per block, so they moved from 0
        assert any(layer.block_scores.abs().sum() > 0 for layer in block_layers(model).values())
    x = torch.randn(2, 3, 32, 32).double()
    model.double().eval()                                         # fusing is exact: float64
    fused = fuse(model).eval()
    assert_exact(model(x), fused(x))
    for name, layer in block_layers(model).items():
        weight = dict(fused.named_modules())[name].weight
        zero = block_sums(weight.abs(), (16, 16)) == 0
        assert torch.equal(zero, layer.block_mask == 0)      # exactly the pruned blocks are zero


def test_pruned_blocks_stay_exactly_zero_after_training_with_momentum_and_weight_decay():
    model = _vit(kind="finetune")            # fine-pruning: the masked weights themselves keep being updated
    attach_blocks(model, (16, 16), dense=True)
    layers = list(block_layers(model).values())
    for layer in layers:
        layer.block_mask[0] = 0              # prune the first block row of every matrix
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    assert any(layer.weight[:16].abs().sum() > 0 for layer in layers)    # the stored weights moved ...
    fused = dict(fuse(model).named_modules())
    for name, layer in block_layers(model).items():
        assert layer.fused_weight()[:16].abs().sum() == 0                 # ... the forward's are zero
        assert fused[name].weight[:16].abs().sum() == 0                    # ... and so are the deployed ones


def test_fine_pruning_masks_the_same_matrices_with_every_weight_trained():
    model = _vit(kind="finetune")
    splopa = _vit()
    names = attach_blocks(model, (16, 16), dense=True)
    assert set(names) == set(attach_blocks(splopa, (16, 16), dense=False))
    assert all(isinstance(m, BlockDenseLinear) for m in block_layers(model).values())
    assert count_parameters(model).trainable == count_parameters(model).total
    pruner = BlockPruner(model, "movement")
    pruner.begin(Stage(1.0, 0.25, steps=4, initial_warmup=0, final_warmup=1))
    _train(model, pruner, 4)
    assert pruner.density == 0.25
    fused = fuse(model)
    assert not block_layers(fused) and count_parameters(fused).total == count_parameters(model).total \
        == count_parameters(model).deployable


def test_soft_movement_keeps_what_the_l1_penalty_leaves():
    densities = []
    for l1 in (0.0, 1e4):
        model = _vit()
        attach_blocks(model, (16, 16), dense=False)
        pruner = BlockPruner(model, "soft_movement", score_lr=0.5, l1=l1)
        pruner.begin(Stage(0.0, 0.3, steps=8, initial_warmup=0, final_warmup=2))
        _train(model, pruner, 8)
        densities.append(pruner.density)
    assert densities[0] > densities[1] and densities[1] < 0.5


def test_a_splopa_block_mismatch_and_an_undivided_model_are_refused():
    with pytest.raises(ValueError, match="prototypes are 16 x 16"):
        attach_blocks(_vit(), (32, 32), dense=False)
    lone = nn.Sequential(nn.Linear(24, 40), nn.Linear(40, 2))
    lone.pretrained_cfg = {"classifier": "1"}
    with pytest.raises(ValueError, match=r"block_shape.*\[8, 8\]"):
        attach_blocks(lone, (32, 32), dense=True)


def test_a_block_pruned_splopa_run_records_stages_and_its_task_file_rebuilds_it(compose_cfg, tmp_path):
    cfg = compose_cfg("adapter=splopa_r64", "backbone=test_vit", "adapter.options.block_shape=[16,16]",
                      "adapter.options.num_prototypes=4", "pruning=block_movement", "pruning.densities=[0.5,0.25]",
                      "pruning.epochs_per_stage=1", "train.epochs=1", "train.max_steps_per_epoch=3")
    summary = pipeline.run(cfg)
    run = RunDir(summary["run_dir"])
    steps = run.read_steps()
    assert [r["step"] for r in steps] == [0, 1, 2] and [r["density"] for r in steps] == [1.0, 0.5, 0.25]
    assert summary["metrics"]["density"] == 0.25
    record = json.loads(run.file("pruning.json").read_text())
    assert record["structure"] == "blocks" and record["unit"] == "blocks"
    assert record["steps"][-1]["kept_blocks"] == steps[-1]["kept_units"] == record["original_blocks"] // 4
    # task.pt holds the masks: on any base, the rebuilt task's fused weights are zero at the pruned blocks
    base = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    loaded = load_task(base, run.file("task.pt")).eval()
    assert sum(m.block_mask.sum().item() for m in block_layers(loaded).values()) == steps[-1]["kept_units"]
    pruned = record["original_blocks"] - steps[-1]["kept_units"]

    def zero_blocks(model: nn.Module) -> int:
        modules = dict(model.named_modules())
        return sum(int((block_sums(modules[n].weight.abs(), (16, 16)) == 0).sum()) for n in block_layers(loaded))
    assert zero_blocks(fuse(loaded)) == pruned
    plain = timm.create_model("test_vit", num_classes=4, img_size=32)
    plain.load_state_dict(load_model_file(run.file("model.pt"))["state_dict"])     # model.pt: the plain, fused model
    assert zero_blocks(plain) == pruned
    assert empty_lines(loaded) == {k: record[k] for k in ("empty_rows", "empty_cols")}


def test_block_pruning_settings_are_checked_before_anything_is_written(compose_cfg, tmp_path):
    cases = [
        (("adapter=splora_r8", "pruning=block_movement"), "masks the blocks of SPLoPA's or fine-tuning's"),
        (("adapter=splopa_r64", "backbone=test_vit", "pruning=block_movement", "pruning.densities=[0.3,0.5]"),
         "strictly decreasing"),
        (("adapter=splopa_r64", "backbone=test_vit", "pruning=block_movement", "pruning.block_shape=[8,8]"),
         "block_shape=null"),
        (("pruning=block_magnitude", "pruning.epochs_per_stage=0"), "epochs_per_stage"),
        (("adapter=splopa_r64", "backbone=test_vit", "pruning=taylor"), "pruning=block_movement"),
        # soft movement's score optimiser and penalty (once unchecked)
        (("pruning=block_soft_movement", "pruning.score_lr=0"), r"pruning.score_lr=0: use null .* or a number > 0"),
        (("pruning=block_soft_movement", "pruning.l1=-1"), r"pruning.l1=-1: use a number >= 0"),
    ]
    for overrides, message in cases:
        with pytest.raises(SettingError, match=message):
            pipeline.run(compose_cfg(*overrides))
    assert not (tmp_path / "results" / "runs").exists()


def test_learned_parameters_of_a_pruned_splopa_count_n_per_kept_block_plus_the_prototypes_once():
    model = _vit()
    attach_blocks(model, (16, 16), dense=False)
    layers = block_layers(model)
    for layer in layers.values():
        layer.block_mask[:, 0] = 0                       # the first block column of every matrix
    kept = sum(int(m.block_mask.sum()) for m in layers.values())
    others = sum(p.numel() for n, p in model.named_parameters()
                 if p.requires_grad and not n.endswith((".B", ".bank.C", ".bank.R")))
    by_hand = 4 * kept + 4 * 2 * (16 + 16) + others      # N·|kept| + N·r·(p + q) once (one shared bank)
    assert count_parameters(model).trainable - pruned_parameters(model)["learned"] == by_hand
    zeroed = sum(m.block_mask.shape[0] * 16 * 16 for m in layers.values())
    assert pruned_parameters(model)["weights"] == zeroed


def test_the_block_report_compares_splopa_with_fine_pruning_at_each_density(tmp_path):
    from helpers import fake_run

    from spa.reporting.blocks import block_report
    runs = tmp_path / "runs" / "block_spa_mini"
    grid = {("finetune", 1): [(1.0, 60.0, 2_236_682), (0.3, 40.0, 900_000)],
            ("finetune", 2): [(1.0, 62.0, 2_236_682), (0.3, 44.0, 900_000)],
            ("splopa_r64", 1): [(1.0, 50.0, 186_698), (0.3, 39.0, 90_000)],
            ("splopa_r64", 2): [(1.0, 52.0, 186_698), (0.3, 41.0, 90_000)]}
    for (adapter, seed), steps in grid.items():
        fake_run(runs / "cifar10" / "mobilenetv2_100" / "block_movement" / adapter / f"seed_{seed}", "cifar10", adapter,
                 "block_movement", seed, [(d, a, p, 1e6) for d, a, p in steps], "2.14.1")
    out = block_report(runs, tmp_path / "tables", tmp_path / "figures", "block_spa_mini")
    table = pd.read_csv(out["csv"])
    cell = table[(table["adapter"] == "splopa_r64") & (table["density"] == 0.3)].iloc[0]
    assert cell["top1"] == 40.0 and cell["seeds"] == 2 and cell["learned_k"] == 90.0
    versus = pd.read_csv(out["versus"])
    row = versus[versus["density"] == 0.3].iloc[0]
    assert row["fewer"] == pytest.approx(10.0) and row["delta"] == pytest.approx(-2.0)
    text = out["md"].read_text()
    assert "torch 2.14.1" in text
    assert "| movement | 30%       | 42.00 ± 2.83 (2) | 40.00 ± 1.41 (2) | 900.0 / 90.0" in text
    figures = [path for key, path in out.items() if key.startswith("figure")]
    assert len(figures) == 4 and all(path.is_file() for path in figures)
    assert "†" not in text and versus["evidence"].all()
    # one SPLoPA seed collapsed at 30 %: its cell is marked, and its difference from fine-pruning is no evidence
    steps_csv = runs / "cifar10" / "mobilenetv2_100" / "block_movement" / "splopa_r64" / "seed_1" / "steps.csv"
    pd.read_csv(steps_csv).assign(collapsed=[False, True]).to_csv(steps_csv, index=False)
    out = block_report(runs, tmp_path / "tables", tmp_path / "figures", "block_spa_mini")
    text = out["md"].read_text()
    assert "| movement | 30%       | 42.00 ± 2.83 (2) | 40.00 ± 1.41 (2) †" in text and "†: collapsed" in text
    versus = pd.read_csv(out["versus"]).set_index("density")
    assert versus["evidence"].to_dict() == {1.0: True, 0.3: False}
    assert versus["collapsed"].to_dict() == {1.0: False, 0.3: True} and not versus["ft_collapsed"].any()


def test_a_block_run_that_died_resumes_after_its_last_stage(compose_cfg, tmp_path, monkeypatch):
    overrides = ("pruning=block_magnitude", "pruning.densities=[0.5,0.25]", "pruning.epochs_per_stage=1",
                 "train.epochs=1", "train.max_steps_per_epoch=2", "pruning.block_shape=[8,8]")
    calls = []
    real_begin = BlockPruner.begin

    def dies_at_the_second_stage(self, stage):
        calls.append(stage.target)
        if stage.target == 0.25 and len(calls) == 2:
            raise KeyboardInterrupt
        return real_begin(self, stage)
    monkeypatch.setattr(BlockPruner, "begin", dies_at_the_second_stage)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose_cfg(*overrides))
    summary = pipeline.run(compose_cfg(*overrides))
    assert calls == [0.5, 0.25, 0.25]                 # the second run redid only the unfinished stage
    steps = RunDir(summary["run_dir"]).read_steps()
    assert [r["density"] for r in steps] == [1.0, 0.5, 0.25]
    assert steps[2]["params_nonzero"] < steps[1]["params_nonzero"] < steps[0]["params_nonzero"]


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["test_vit", "mobilenetv2_035"])
def test_cropping_removes_only_what_no_layer_reads_and_changes_no_output(name):
    from spa.pruning.blocks import crop
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if name == "test_vit" else {}
    model = timm.create_model(name, num_classes=3, **kwargs).eval()
    attach_blocks(model, (8, 8), dense=True)
    layers = block_layers(model)
    for layer in layers.values():                 # every consumer matrix: its first 8 input columns pruned
        layer.block_mask[:, 0] = 0
    plain = fuse(model).eval().double()                # cropping is exact: float64
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():
        expected = plain(x)
    macs = count_macs(plain, (32, 32))
    result = crop(plain, (32, 32))
    assert result["cropped_filters"] > 0
    with torch.no_grad():
        assert_exact(plain(x), expected)
    assert count_macs(plain, (32, 32)) < macs


@pytest.mark.numerics
def test_hybrid_column_masks_prune_whole_input_channels_that_cropping_then_removes():
    from spa.pruning.blocks import crop
    torch.manual_seed(0)
    model = apply_adapter(timm.create_model("mobilenetv2_035", num_classes=3), "splopa", num_prototypes=4,
                          block_shape=(8, 8))
    attach_blocks(model, (8, 8), dense=False, columns=["conv_pwl"])
    layers = block_layers(model)
    pwl = layers["blocks.6.0.conv_pwl"]                 # 112 x 336 (at width 0.35): one mask entry per 8 columns
    assert pwl.block_shape == (112, 8) and pwl.block_mask.shape == (1, 42) and pwl.block_units == 14
    pruner = BlockPruner(model, "magnitude")
    pruner.begin(Stage(1.0, 0.5, steps=2, initial_warmup=0, final_warmup=1))
    _train(model, pruner, 2, lr=1e-3)
    assert pruner.density == pytest.approx(0.5, abs=0.01)
    # a pruned column strip of a SPLoPA layer takes N positions per 8 x 8 block it covers out of the count
    pwl_pruned = int((pwl.block_mask == 0).sum())
    assert pwl_pruned == 21
    # cropping is exact in real arithmetic: checked in float64 (in float32 the logits, up to ~100 after
    # this training, moved by 8e-3 on one CPU's kernels and 1e-5 on another's: issue 32)
    plain = fuse(model).eval().double()
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():
        expected = plain(x)
    macs = count_macs(plain, (32, 32))
    assert crop(plain, (32, 32))["cropped_filters"] >= 2 * 8 * 21    # a pw row and a dw filter per column
    with torch.no_grad():
        assert_exact(plain(x), expected)
    assert count_macs(plain, (32, 32)) < 0.9 * macs
    with pytest.raises(ValueError, match="names no masked layer"):
        attach_blocks(_vit(), (16, 16), dense=False, columns=["conv_pwl"])


@pytest.mark.numerics
@pytest.mark.parametrize("form", ["dense", "bsr", "csr"])
def test_sparse_deployment_keeps_the_outputs_in_each_form(form):
    from spa.pruning.sparse import SparseLinear, deploy_sparse
    model = _vit(kind="finetune")
    attach_blocks(model, (16, 16), dense=True)
    for layer in block_layers(model).values():
        layer.block_mask[:, ::2] = 0                      # half the blocks of every matrix
    plain = fuse(model).eval().double()                 # dropping zero blocks is exact: float64
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():
        expected = plain(x)
    forms = deploy_sparse(plain, x, (16, 16), choose=lambda weight, block, tokens: form)
    assert len(forms) == 24 and set(forms.values()) == {form}        # 4 Linear layers in each of 6 blocks
    sparse = [m for m in plain.modules() if isinstance(m, SparseLinear)]
    assert len(sparse) == (0 if form == "dense" else 24) and all(m.form == form for m in sparse)
    with torch.no_grad():
        assert_exact(plain(x), expected)


def test_sparse_deployment_by_timing_picks_a_known_form():
    from spa.pruning.sparse import deploy_sparse
    model = _vit(kind="finetune")
    attach_blocks(model, (16, 16), dense=True)
    for layer in block_layers(model).values():
        layer.block_mask[:, 1:] = 0
    plain = fuse(model).eval()
    forms = deploy_sparse(plain, torch.randn(2, 3, 32, 32), (16, 16))
    assert forms and set(forms.values()) <= {"dense", "bsr", "csr"}


# ----------------------------------------------------------------------------- which blocks each method keeps
def _matrix_model(weight: torch.Tensor) -> nn.Module:
    """One 32 x 32 Linear (no bias) with the given weight, masked by 16 x 16 blocks (a 2 x 2 grid)."""
    model = nn.Sequential(nn.Linear(32, 32, bias=False))
    model.pretrained_cfg = {"classifier": "none"}
    with torch.no_grad():
        model[0].weight.copy_(weight)
    attach_blocks(model, (16, 16), dense=True)
    return model


def _blocks(values) -> torch.Tensor:
    """A 32 x 32 matrix whose 16 x 16 block (i, j) is values[i][j] everywhere."""
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(16, 0).repeat_interleave(16, 1)


def _kept_after(model: nn.Module, method: str, steps: int, **options) -> torch.Tensor:
    """Block mask after ``steps`` training steps at lr 0 (the weights stay as built) of the loss
    L = Σ y·g with x = 1 (columns 0-15) or 2 (16-31) and g = +1 (rows 0-15) or -1 (16-31), so that
    ∂L/∂W[o, i] = g[o]·x[i] is known by hand: W·∂L/∂W > 0 (SGD moves W towards 0) in the top block
    row, < 0 (away from 0) in the bottom one, twice as much in the right block column."""
    layer = model[0]
    pruner = BlockPruner(model, method, **options)
    pruner.begin(Stage(1.0 if method != "soft_movement" else 0.0, 0.5 if method != "soft_movement" else 0.4,
                       steps=steps, initial_warmup=0, final_warmup=0))
    x = torch.cat([torch.ones(1, 16), 2 * torch.ones(1, 16)], dim=1)
    g = torch.cat([torch.ones(1, 16), -torch.ones(1, 16)], dim=1)
    for _ in range(steps):
        layer.train()
        (model(x) * g).sum().backward()
        layer.weight.grad = None
        pruner.on_step()
    return layer.block_mask.clone()


def _flipped(monkeypatch):
    """Every block score with its sign flipped: what a sign error in a method would do."""
    from spa.pruning import blocks
    real = blocks.block_sums
    monkeypatch.setattr(blocks, "block_sums", lambda matrix, block: -real(matrix, block))


@pytest.mark.parametrize("flip", [False, True])
def test_magnitude_keeps_the_blocks_of_largest_absolute_weight(monkeypatch, flip):
    # |W| per block: 3 and 0.5 on top, 2 (negative weights) and 1 below; half the blocks kept
    weight = _blocks([[3.0, 0.5], [-2.0, 1.0]]) * torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)
    if flip:
        _flipped(monkeypatch)
    kept = _kept_after(_matrix_model(weight), "magnitude", 1)
    expected = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.equal(kept, expected) != flip, kept          # a flipped score keeps the smallest instead


def test_magnitude_ranks_blocks_by_their_frobenius_norm_not_the_sum_of_absolute_values():
    # per block: one weight of 20 (Frobenius 20, Σ|W| 20), 256 of 0.5 (8, 128), of 0.1 (1.6, 25.6),
    # of 0.05 (0.8, 12.8): the spike and the 0.5 block have the largest norms, Σ|W| keeps 0.5 and 0.1
    weight = _blocks([[0.0, 0.5], [0.1, 0.05]])
    weight[3, 5] = 20.0
    kept = _kept_after(_matrix_model(weight), "magnitude", 1)
    assert torch.equal(kept, torch.tensor([[1.0, 1.0], [0.0, 0.0]])), kept


@pytest.mark.parametrize("flip", [False, True])
def test_movement_keeps_the_blocks_whose_weights_move_away_from_zero(monkeypatch, flip):
    """score = −Σ W·∂L/∂W accumulated: W = 1 everywhere, so the gradient's sign decides; the bottom
    row's weights grow under SGD (∂L/∂W < 0), the top row's shrink towards zero."""
    if flip:
        _flipped(monkeypatch)
    model = _matrix_model(torch.ones(32, 32))
    kept = _kept_after(model, "movement", 3)
    scores = model[0].block_scores
    assert torch.equal(kept, torch.tensor([[0.0, 0.0], [1.0, 1.0]])) != flip, kept
    if not flip:       # by hand: −Σ W·g·x over a 16 x 16 block, per step, 3 steps
        assert torch.equal(scores, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]) * 256 * 3)


@pytest.mark.parametrize("flip", [False, True])
def test_soft_movement_raises_the_scores_of_blocks_moving_away_from_zero_and_lowers_the_others(monkeypatch, flip):
    if flip:
        _flipped(monkeypatch)
    model = _matrix_model(torch.ones(32, 32))
    kept = _kept_after(model, "soft_movement", 40, score_lr=0.1, l1=1.0)
    scores = model[0].block_scores
    moved = bool((scores[1] > 0).all() and (scores[0] < 0).all())     # Adam on Σ W·∂L/∂W (+ the L1 push down)
    assert moved != flip, scores
    assert torch.equal(kept, torch.tensor([[0.0, 0.0], [1.0, 1.0]])) != flip, (kept, scores)


def test_soft_movement_prunes_within_a_short_stage_with_its_default_score_rate():
    """At the spec's fixed 1e-2 no score falls below logit(0.4) = -0.41 in 40 steps (Adam moves it by
    about 0.01 a step; τ ramps to 0.4 only at the end): nothing is pruned. The default (score_lr None)
    raises the rate for a stage this short, and the blocks moving towards zero go."""
    assert stage_score_lr(0.1, 100_000) == 1e-2
    assert stage_score_lr(0.4, 40) == pytest.approx(2 * math.log(1.5) / 40)
    fixed = _matrix_model(torch.ones(32, 32))
    assert torch.equal(_kept_after(fixed, "soft_movement", 40, score_lr=1e-2), torch.ones(2, 2))
    default = _matrix_model(torch.ones(32, 32))
    assert torch.equal(_kept_after(default, "soft_movement", 40), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert (default[0].block_scores[0] < math.log(0.4 / 0.6)).all()


@pytest.mark.parametrize("options, message", [({"score_lr": 0.0}, "score_lr=0.0"), ({"score_lr": -1.0}, "score_lr"),
                                              ({"l1": -0.5}, "l1=-0.5")])
def test_soft_movement_refuses_a_score_rate_or_penalty_out_of_range(options, message):
    with pytest.raises(ValueError, match=message):
        BlockPruner(_matrix_model(torch.ones(32, 32)), "soft_movement", **options)
