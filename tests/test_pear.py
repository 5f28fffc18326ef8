"""Pear (spa.adapters.pear): the plan, tied sharing, the knowledge checkpoint, counts, the pipeline's
records, task files and resume."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from numerics import FLOAT32_STORED, assert_close_rel, assert_exact

from spa import pipeline
from spa.adapters import apply_adapter
from spa.adapters.pear import apply_plan, importance, make_plan, positions, residual_parameters
from spa.metrics import count_parameters
from spa.models import load_model_file
from spa.records import RunDir
from spa.saved import load_task, task_state
from spa.settings import SettingError

PEAR_LORA = {"rank": 8, "init_range": 0.0, "scale": 1.0, "positions": "pear"}


def _vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_vit", num_classes=4, img_size=32)
    apply_adapter(model, "splora", **PEAR_LORA)
    with torch.no_grad():                 # trained adapters: B away from its zero start
        for layer in positions(model).values():
            layer.B.normal_(0, 0.02)
    return model


def _plan(model, pruned: dict[str, str | None]) -> dict:
    """A plan by hand: ``pruned`` = {position: donor or None}."""
    names = list(positions(model))
    return {"positions": names, "importance": dict.fromkeys(names, 1.0), "ratio": len(pruned) / len(names),
            "mapping": "rank", "pruned": list(pruned), "donors": pruned, "shapes": {}}


def test_pear_positions_are_the_vit_blocks_qkv_proj_fc1_fc2_and_the_pointwise_convs_of_a_cnn():
    names = list(positions(_vit()))
    assert len(names) == 24 and names[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                                              "blocks.0.mlp.fc2"]
    cnn = timm.create_model("mobilenetv2_100", num_classes=3)
    apply_adapter(cnn, "splora", **PEAR_LORA)
    layers = positions(cnn)
    assert len(layers) == 34 and all(layer.kernel_size == (1, 1) and layer.groups == 1 for layer in layers.values())
    assert "conv_stem" not in layers and not any(name.endswith("conv_dw") for name in layers)


@pytest.mark.numerics
def test_a_lora_scale_multiplies_the_update_in_training_and_in_the_fused_weight(float64):
    from spa.adapters import SPLoRAConv2d, SPLoRALinear
    torch.manual_seed(0)
    for layer, x in ((SPLoRALinear.from_module(torch.nn.Linear(6, 5), rank=2, scale=2.5), torch.randn(3, 6)),
                     (SPLoRAConv2d.from_module(torch.nn.Conv2d(6, 5, 3, padding=1), rank=2, scale=2.5),
                      torch.randn(2, 6, 7, 7))):
        with torch.no_grad():
            layer.B.normal_()
        plain = layer.to_module()
        delta = plain.weight - layer.weight
        centre = delta if delta.dim() == 2 else delta[:, :, 1, 1]
        assert_exact(centre, 2.5 * (layer.B @ layer.A).detach())
        with torch.no_grad():
            assert_exact(layer.train()(x), plain(x))
            assert torch.equal(layer.eval()(x), plain(x))


def test_scoring_the_adapters_changes_nothing_in_the_model():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", num_classes=3)
    apply_adapter(model, "splora", **PEAR_LORA)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))) for _ in range(2)]
    importance(model, "taylor", batches, torch.device("cpu"))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_plan_prunes_the_least_important_and_maps_donors_of_the_same_shape_by_rank_or_depth():
    model = _vit()
    names = list(positions(model))
    # importance rises with depth, except that the qkv of block 5 is the least important of all
    scores = {n: float(i) for i, n in enumerate(names)} | {"blocks.5.attn.qkv": -1.0}
    plan = make_plan(model, scores, ratio=0.25, mapping="rank")          # m = 6
    assert plan["pruned"] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
                              "blocks.1.attn.qkv", "blocks.5.attn.qkv"]
    # qkv and fc1 are both 192 x 64, one shape: pruned 5.qkv (-1), 0.qkv (0), 0.fc1 (2), 1.qkv (4) receive the kept
    # ones of that shape from the most important down: 5.fc1 (22), 4.fc1 (18), 4.qkv (16), 3.fc1 (14)
    assert {p: plan["donors"][p] for p in ("blocks.5.attn.qkv", "blocks.0.attn.qkv", "blocks.0.mlp.fc1",
                                           "blocks.1.attn.qkv")} == {
        "blocks.5.attn.qkv": "blocks.5.mlp.fc1", "blocks.0.attn.qkv": "blocks.4.mlp.fc1",
        "blocks.0.mlp.fc1": "blocks.4.attn.qkv", "blocks.1.attn.qkv": "blocks.3.mlp.fc1"}
    assert plan["donors"]["blocks.0.mlp.fc2"] == "blocks.5.mlp.fc2"
    assert plan["donors"]["blocks.0.attn.proj"] == "blocks.5.attn.proj"
    nearest = make_plan(model, scores, ratio=0.25, mapping="nearest")
    # 5.qkv (depth 20): 4.fc1 (18) and 5.fc1 (22) are as near, the more important wins; 0.qkv: 1.fc1 (6)
    assert nearest["donors"]["blocks.5.attn.qkv"] == "blocks.5.mlp.fc1"
    assert nearest["donors"]["blocks.0.attn.qkv"] == "blocks.1.mlp.fc1"
    # ratio > 0.5: more pruned than kept, so one donor serves several positions (cycling, most important first)
    many = make_plan(model, {n: float(i) for i, n in enumerate(names)}, ratio=0.75)
    wide = [p for p in many["pruned"] if p.endswith(("qkv", "fc1"))]
    assert len(many["pruned"]) == 18 and len(wide) == 9
    assert [many["donors"][p] for p in wide[:4]] == ["blocks.5.mlp.fc1", "blocks.5.attn.qkv", "blocks.4.mlp.fc1",
                                                     "blocks.5.mlp.fc1"]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_plan(model, scores, ratio=1.0)


@pytest.mark.numerics
def test_taylor_importance_is_the_absolute_sum_of_theta_times_its_gradient_over_the_batches(float64):
    model = _vit()
    torch.manual_seed(1)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))) for _ in range(2)]
    scores = importance(model, "taylor", batches, torch.device("cpu"))
    layer = positions(model)["blocks.2.mlp.fc1"]
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    by_hand = ((layer.A * layer.A.grad).sum() + (layer.B * layer.B.grad).sum()).abs().item()
    assert scores["blocks.2.mlp.fc1"] == pytest.approx(by_hand, rel=1e-9)     # float64: the same sum
    magnitude = importance(model, "magnitude", [], torch.device("cpu"))
    assert magnitude["blocks.2.mlp.fc1"] == pytest.approx(float((layer.B @ layer.A).detach().norm()), rel=1e-9)
    assert importance(model, "random", [], torch.device("cpu"), seed=3) == \
        importance(model, "random", [], torch.device("cpu"), seed=3)


@pytest.mark.numerics
def test_tied_positions_receive_the_sum_of_both_gradients_and_stay_tied_after_an_optimiser_step(float64):
    model = _vit()
    untied = copy.deepcopy(model)
    apply_plan(untied, _plan(untied, {"blocks.1.attn.qkv": "blocks.0.attn.qkv"}), sharing="copy", checkpoint="none")
    apply_plan(model, _plan(model, {"blocks.1.attn.qkv": "blocks.0.attn.qkv"}), sharing="tied", checkpoint="none")
    donor, tied = positions(model)["blocks.0.attn.qkv"], positions(model)["blocks.1.attn.qkv"]
    assert tied.A is donor.A and tied.B is donor.B
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    for m in (model, untied):
        F.cross_entropy(m(x), y).backward()
    u0, u1 = positions(untied)["blocks.0.attn.qkv"], positions(untied)["blocks.1.attn.qkv"]
    assert_exact(donor.A.grad, u0.A.grad + u1.A.grad)
    assert_exact(donor.B.grad, u0.B.grad + u1.B.grad)
    before = donor.B.detach().clone()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9).step()
    assert not torch.equal(donor.B, before)
    assert tied.A is donor.A and tied.B is donor.B and torch.equal(tied.B, donor.B)
    # the optimiser sees the tied tensors once
    assert sum(p is donor.A for p in model.parameters()) == 1


@pytest.mark.numerics
@pytest.mark.parametrize("sharing", ["tied", "none"])
def test_a_folded_position_outputs_exactly_base_plus_its_residual_plus_its_donor(sharing, float64):
    model = _vit().eval()
    layer, donor = positions(model)["blocks.3.mlp.fc1"], positions(model)["blocks.1.mlp.fc1"]
    base, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    folded = (layer.B @ layer.A).detach().clone()
    donor_delta = (donor.B @ donor.A).detach().clone() if sharing == "tied" else torch.zeros_like(folded)
    apply_plan(model, _plan(model, {"blocks.3.mlp.fc1": "blocks.1.mlp.fc1"}), sharing=sharing, checkpoint="fold")
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(layer.residual(), folded)
        assert torch.equal(layer(x), F.linear(x, base + (donor_delta + folded), bias))
        layer.train()
        assert_exact(layer(x), F.linear(x, base + donor_delta + folded, bias))
    assert not layer.pear_residual_A.requires_grad and not layer.pear_residual_B.requires_grad
    assert (layer.A.requires_grad, layer.B.requires_grad) == ((True, True) if sharing == "tied" else (False, False))


def test_learned_and_stored_parameters_count_shared_tensors_once_by_hand_on_a_small_vit():
    # test_vit: 6 blocks, width 64; LoRA r8 on qkv (64 -> 192), proj (64 -> 64), fc1 (64 -> 192), fc2 (192 -> 64)
    per_block = 8 * (64 + 192) + 8 * (64 + 64) + 8 * (64 + 192) + 8 * (192 + 64)            # 7,168
    norms = 6 * 2 * 128 + 128                                                           # LayerNorm gamma, beta
    biases = 6 * (192 + 64 + 192 + 64) + 64                                             # + the patch embedding's
    head = 64 * 4 + 4
    tokens = 64 + 5 * 64                                                                # class token, 1 + 4 positions
    full = 6 * per_block + norms + biases + head + tokens
    assert count_parameters(_vit()).trainable == full == 48_452
    pruned = {f"blocks.{i}.attn.qkv": "blocks.0.attn.qkv" for i in range(1, 6)}      # one donor, five receivers
    for sharing, checkpoint, learned, stored in [
            ("tied", "fold", full - 5 * 2048, full),            # the folded factors: 5 · 8 · (192 + 64) stored
            ("copy", "none", full, full),
            ("none", "fold", full - 5 * 2048, full),
            ("none", "none", full - 5 * 2048, full - 5 * 2048)]:
        model = _vit()
        apply_plan(model, _plan(model, pruned), sharing=sharing, checkpoint=checkpoint)
        counted = count_parameters(model).trainable
        assert (counted, counted + residual_parameters(model)) == (learned, stored), (sharing, checkpoint)
        state = task_state(model)        # the task file holds each trainable tensor once
        factors = sum(v.numel() for k, v in state.items() if k.endswith((".A", ".B")))
        assert factors == learned - norms - biases - head - tokens


def _pear_overrides(*extra: str) -> tuple[str, ...]:
    return ("backbone=test_vit", "adapter=pear_lora_r8", "pruning=pear", "train.epochs=3", "pruning.prune_at_epoch=1",
            "pruning.score_batches=2", "train.max_steps_per_epoch=3", *extra)


def _fresh_base(run: RunDir) -> torch.nn.Module:
    """The run's starting weights in a plain model (test_vit's are random: taken from its checkpoint)."""
    base = timm.create_model("test_vit", num_classes=4, img_size=32)
    state = torch.load(run.file("checkpoint.pt"), weights_only=True)["state_dict"]
    base.load_state_dict({k: v for k, v in state.items() if k in base.state_dict()}, strict=False)
    return base.eval()


@pytest.mark.numerics
def test_a_pear_run_records_its_plan_counts_and_a_task_file_that_rebuilds_it(compose_cfg):
    summary = pipeline.run(compose_cfg(*_pear_overrides()))
    run = RunDir(summary["run_dir"])
    assert "/pear_0.5/pear_lora_r8/" in summary["run_dir"]
    record = json.loads(run.file("pear.json").read_text())
    plan = record["plan"]
    assert len(plan["positions"]) == 24 and len(plan["pruned"]) == 12
    assert record["unique_adapters"] == 12 and set(record["shared"]) <= set(plan["pruned"])
    assert all(plan["shapes"][p] == plan["shapes"][d] for p, d in record["shared"].items())
    steps = run.read_steps()
    assert [r["step"] for r in steps] == [0, 1]
    assert steps[1]["params_stored"] == steps[1]["params_learned"] + record["residual_parameters"]
    assert summary["params"]["stored"] == summary["params"]["trainable"] + record["residual_parameters"]
    shapes = plan["shapes"]
    assert record["residual_parameters"] == sum(8 * (shapes[p][0] + shapes[p][1]) for p in plan["pruned"])
    # the warm-up is a run of its own, shared by every ratio and variant
    warmup = run.path.parents[2] / "warmup_1ep" / "pear_lora_r8" / "seed_1"
    assert json.loads((warmup / "summary.json").read_text())["epochs"] == 1
    # task.pt on a fresh base gives the run's model: equal to the fused model.pt, exactly
    loaded = load_task(_fresh_base(run), run.file("task.pt")).eval().double()
    plain = timm.create_model("test_vit", num_classes=4, img_size=32)
    plain.load_state_dict(load_model_file(run.file("model.pt"))["state_dict"])
    x = torch.randn(3, 3, 32, 32).double()
    with torch.no_grad():   # float64 forwards: model.pt holds the fused weights rounded to float32 once
        assert_close_rel(loaded(x), plain.eval().double()(x), FLOAT32_STORED, "task.pt on a fresh base vs model.pt")
    tied = [(p, d) for p, d in record["shared"].items()]
    layers = positions(loaded)
    assert tied and all(layers[p].A is layers[d].A for p, d in tied)


def test_a_pear_run_killed_between_pruning_and_the_end_resumes_to_the_same_result(compose_cfg, tmp_path, monkeypatch):
    straight = pipeline.run(compose_cfg(*_pear_overrides(f"paths.results_dir={tmp_path / 'straight'}")))
    real_train = pipeline.Parts.train
    calls = []

    def dies_in_pear_training(self, epochs, phase, step, on_step=None):
        calls.append(phase)
        if phase == "pear" and calls.count("pear") == 1:
            raise KeyboardInterrupt
        return real_train(self, epochs, phase, step, on_step)
    monkeypatch.setattr(pipeline.Parts, "train", dies_in_pear_training)
    overrides = _pear_overrides(f"paths.results_dir={tmp_path / 'killed'}")
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose_cfg(*overrides))
    run_dir = RunDir(tmp_path / "killed" / "runs" / "test" / "image_folder" / "test_vit" / "pear_0.5" / "pear_lora_r8"
                     / "seed_1")
    assert not run_dir.file("summary.json").exists() and run_dir.file("checkpoint.pt").exists()
    resumed = pipeline.run(compose_cfg(*overrides))
    assert calls == ["train", "pear", "pear"]          # the warm-up once; Pear's training redone after the kill
    assert resumed["metrics"] == straight["metrics"] and resumed["params"] == straight["params"]
    plans = [json.loads(RunDir(s["run_dir"]).file("pear.json").read_text())["plan"] for s in (straight, resumed)]
    assert plans[0] == plans[1]
    # a run killed after its last checkpoint (before summary.json) rebuilds the ties before loading it
    RunDir(resumed["run_dir"]).file("summary.json").unlink()
    again = pipeline.run(compose_cfg(*overrides))
    assert again["metrics"] == straight["metrics"] and calls.count("pear") == 2


def test_pear_after_channel_pruning_keeps_the_pruned_network_and_shares_only_equal_shapes(compose_cfg):
    summary = pipeline.run(compose_cfg("adapter=pear_lora_r8", "pruning=pear", "pruning.after=taylor",
                                       "pruning.prune_at_epoch=1", "train.epochs=2", "pruning.score_batches=2",
                                       "schedule.step_fraction=0.25", "schedule.target_density=0.5",
                                       "schedule.recovery_epochs=1", "schedule.score_batches=1",
                                       "train.max_steps_per_epoch=2"))
    run = RunDir(summary["run_dir"])
    steps = run.read_steps()
    assert steps[0]["density"] == steps[1]["density"] == pytest.approx(0.5, abs=0.02)
    assert steps[1]["macs"] == steps[0]["macs"]         # Pear leaves the channel-pruned network's cost as it is
    record = json.loads(run.file("pear.json").read_text())
    assert record["after"] == "taylor"
    assert all(record["plan"]["shapes"][p] == record["plan"]["shapes"][d] for p, d in record["shared"].items())
    payload = torch.load(run.file("task.pt"), weights_only=True)
    assert payload["structure"]["structure"] == "pear" and payload["structure"]["channels"]["history"]


def test_pear_settings_are_checked_before_anything_is_written(compose_cfg, tmp_path):
    cases = [
        (("adapter=finetune", "pruning=pear"), "adapter=pear_lora_r8"),
        (("adapter=pear_lora_r8", "pruning=pear", "pruning.ratio=1.0"), r"\[0, 1\)"),
        (("adapter=pear_lora_r8", "pruning=pear", "pruning.prune_at_epoch=2"), "prune_at_epoch<2"),
        (("adapter=pear_lora_r8", "pruning=pear", "pruning.sharing=none", "pruning.checkpoint=blend"),
         "checkpoint=fold or none"),
        (("adapter=pear_lora_r8", "pruning=pear", "pruning.importance=fisher"), "taylor"),
        (("adapter=pear_lora_r8", "pruning=pear", "pruning.after=block_movement"), "channel prunings"),
        (("adapter=lora_r8", "pruning=pear", "pruning.after=taylor"), "cannot be channel-pruned"),
        (("adapter=pear_lora_r8", "pruning=pear", "adapter.options.positions=[nowhere]"), "positions"),
    ]
    for overrides, message in cases:
        with pytest.raises(SettingError, match=message):
            pipeline.run(compose_cfg("train.epochs=2", "pruning.prune_at_epoch=1", *overrides))
    assert not (tmp_path / "results" / "runs").exists()


def _fake_pear_run(root, pruning: str, adapter: str, seed: int, rank: int, ratio: float, sharing: str,
                   checkpoint: str, top1: float, learned: int, after: str | None = None,
                   data: dict | None = None) -> None:
    """A finished Pear run as the report reads it: summary.json, steps.csv, pear.json (4 positions)."""
    run = root / "cifar10" / "mobilenetv2_100" / pruning / adapter / f"seed_{seed}"
    run.mkdir(parents=True)
    names = ["a", "b", "c", "d"]
    pruned = names[:round(ratio * 4)]
    shared = {p: "d" for p in pruned} if sharing != "none" else {}
    stored = learned + (100 * len(pruned) if checkpoint == "fold" else 0)
    (run / "summary.json").write_text(json.dumps({
        "dataset": "cifar10", "adapter": adapter, "pruning": pruning, "seed": seed, "ranks": {"rank": rank},
        "metrics": {"test_top1": top1}, "params": {"trainable": learned, "stored": stored},
        "versions": {"torch": "2.14.1"}, **({"data": data} if data else {})}))
    (run / "steps.csv").write_text("step,density,top1_before,top1,macs\n0,1.0,,50.0,1000\n"
                                   f"1,1.0,40.0,{top1},1000\n")
    (run / "pear.json").write_text(json.dumps({
        "plan": {"ratio": ratio, "pruned": pruned, "positions": names}, "sharing": sharing, "checkpoint": checkpoint,
        "after": after, "unique_adapters": 4 - len(pruned), "shared": shared}))


def test_the_pear_report_pairs_seeds_to_give_the_effects_of_sharing_and_of_the_checkpoint(tmp_path):
    from spa.reporting.pear import pear_report
    runs = tmp_path / "runs" / "pear_mini"
    grid = {("pear_baseline", "pear_lora_r8", 8, 0.0, "tied", "fold"): (70.0, 72.0, 2000),
            ("pear_baseline", "pear_lora_r4", 4, 0.0, "tied", "fold"): (68.0, 66.0, 1100),
            ("pear_prune_only_0.5", "pear_lora_r8", 8, 0.5, "none", "none"): (60.0, 62.0, 1000),
            ("pear_share_0.5", "pear_lora_r8", 8, 0.5, "tied", "none"): (63.0, 66.0, 1000),
            ("pear_0.5", "pear_lora_r8", 8, 0.5, "tied", "fold"): (65.0, 65.0, 1000)}
    for (pruning, adapter, rank, ratio, sharing, checkpoint), (top1_1, top1_2, learned) in grid.items():
        for seed, top1 in ((1, top1_1), (2, top1_2)):
            _fake_pear_run(runs, pruning, adapter, seed, rank, ratio, sharing, checkpoint, top1, learned)
    out = pear_report(runs, tmp_path / "tables", tmp_path / "figures", "pear_mini")
    table = pd.read_csv(out["csv"]).set_index(["learner", "ratio"])
    assert list(table.index.get_level_values(0)) == ["LoRA (full rank)", "LoRA (half rank)", "prune-only",
                                                     "prune + share", "Pear (share + checkpoint)"]
    pear = table.loc[("Pear (share + checkpoint)", 0.5)]
    assert (pear["top1"], pear["top1_std"], pear["seeds"], pear["stored_k"]) == (65.0, 0.0, 2, 1.2)
    assert table.loc[("LoRA (half rank)", 0.0), "top1"] == 67.0
    fx = pd.read_csv(out["effects"]).set_index("effect")
    # by hand: sharing (63 - 60, 66 - 62) = (3, 4); checkpoint (65 - 63, 65 - 66) = (2, -1); Pear - r4 (-3, -1)
    assert fx.loc["sharing", "delta"] == 3.5 and fx.loc["sharing", "positive"] == 2
    assert fx.loc["checkpoint", "delta"] == 0.5 and fx.loc["checkpoint", "delta_std"] == pytest.approx(2.1213, abs=1e-4)
    assert fx.loc["checkpoint", "positive"] == 1
    assert fx.loc["Pear over LoRA (half rank)", "delta"] == -2.0
    assert "| Pear (share + checkpoint) | 0.5     | 65.00 ± 0.00 (2) |" in out["md"].read_text()
    assert out["figure0"].is_file()
    # Pear after channel pruning: its own table, the channel-pruned run it started from once per seed
    start = runs / "cifar10" / "mobilenetv2_100" / "taylor" / "pear_lora_r8" / "seed_1"
    start.mkdir(parents=True)
    (start / "summary.json").write_text(json.dumps({"metrics": {"test_top1": 50.0}, "params": {"trainable": 900}}))
    (start / "steps.csv").write_text("step,density,top1,macs\n0,1.0,70.0,1000\n1,0.5,50.0,400\n")
    for pruning, ratio, top1 in (("pear_after_taylor_0.0", 0.0, 55.0), ("pear_after_taylor_0.5", 0.5, 53.0)):
        _fake_pear_run(runs, pruning, "pear_lora_r8", 1, 8, ratio, "tied", "fold", top1, 700, after="taylor")
    combo = pd.read_csv(pear_report(runs, tmp_path / "tables", tmp_path / "figures", "pear_mini")["after_channels"])
    assert list(combo["model"]) == ["SPLoRA r8, taylor-pruned", "+ the same epochs, no adapter pruned",
                                    "+ Pear (ratio 0.5)"]
    assert list(combo["top1"]) == [50.0, 55.0, 53.0] and list(combo["stored_k"]) == [0.9, 0.7, 0.9]
    assert len(pd.read_csv(tmp_path / "tables" / "pear_mini.csv")) == 5      # the plain table is unchanged


def test_the_pear_report_marks_a_collapsed_run_and_the_effects_computed_over_it(tmp_path):
    """846 test images, the majority class 11.8 %: a prune-only run at 12 % is a collapse."""
    from spa.reporting.pear import pear_report
    runs, data = tmp_path / "runs" / "pear_mini", {"test": 846, "majority": 11.8}
    for seed in (1, 2):
        _fake_pear_run(runs, "pear_prune_only_0.5", "pear_lora_r8", seed, 8, 0.5, "none", "none",
                       12.0 if seed == 1 else 60.0, 1000, data=data)
        _fake_pear_run(runs, "pear_share_0.5", "pear_lora_r8", seed, 8, 0.5, "tied", "none", 63.0, 1000, data=data)
        _fake_pear_run(runs, "pear_0.5", "pear_lora_r8", seed, 8, 0.5, "tied", "fold", 65.0, 1000, data=data)
    out = pear_report(runs, tmp_path / "tables", tmp_path / "figures", "pear_mini")
    text = out["md"].read_text()
    assert "| prune-only                |     0.5 | 36.00 ± 33.94 (2) † |" in text and "†: collapsed" in text
    assert "| 65.00 ± 0.00 (2)    |" in text                            # Pear's own cell is not marked
    fx = pd.read_csv(out["effects"]).set_index("effect")["evidence"].to_dict()
    assert fx == {"sharing": False, "checkpoint": True, "Pear over prune-only": False}
    assert pd.read_csv(out["runs"])["collapsed"].tolist().count(True) == 1


@pytest.mark.parametrize("sharing", ["tied", "copy"])
@pytest.mark.parametrize("blend_weight", [None, 0.3])
def test_the_blend_does_not_depend_on_the_order_of_the_positions(sharing, blend_weight):
    """At ratio 0.75 one donor serves several pruned positions: the blend once went one pruned position
    at a time (each later one diluting the earlier ones) and copies took the donor half-blended."""
    import random
    model = _vit()
    names = list(positions(model))
    plan = make_plan(model, {n: 1.0 + (7 * i % 11) for i, n in enumerate(names)}, ratio=0.75)
    served = {}
    for pruned, donor in plan["donors"].items():
        served.setdefault(donor, []).append(pruned)
    assert max(len(v) for v in served.values()) >= 2           # the case where order mattered
    results = []
    for seed in range(3):
        shuffled = list(plan["pruned"])
        random.Random(seed).shuffle(shuffled)
        permuted = {**plan, "pruned": shuffled, "donors": {p: plan["donors"][p] for p in reversed(shuffled)}}
        copy_ = copy.deepcopy(model)
        apply_plan(copy_, permuted, sharing=sharing, checkpoint="blend", blend_weight=blend_weight)
        results.append({n: (layer.A.detach().clone(), layer.B.detach().clone())
                        for n, layer in positions(copy_).items()})
    for other in results[1:]:
        assert all(torch.equal(results[0][n][0], other[n][0]) and torch.equal(results[0][n][1], other[n][1])
                   for n in names)
    # every pruned position starts from its donor's final blend
    for pruned, donor in plan["donors"].items():
        if donor is not None:
            assert torch.equal(results[0][pruned][0], results[0][donor][0])
    # and the blend is the convex combination the docstring gives (one donor checked by hand)
    donor, pruned = next((d, p) for d, p in served.items() if d is not None and len(p) >= 2)
    layers = positions(model)
    if blend_weight is None:
        s = plan["importance"]
        total = s[donor] + sum(s[p] for p in pruned)
        expected = sum(s[n] / total * layers[n].A.detach() for n in [donor, *sorted(pruned)])
    else:
        expected = (1 - blend_weight) * layers[donor].A.detach() + sum(
            blend_weight / len(pruned) * layers[p].A.detach() for p in sorted(pruned))
    torch.testing.assert_close(results[0][donor][0], expected, rtol=0, atol=1e-7)
