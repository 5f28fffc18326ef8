"""The ICLR version's ViT setting (issue 16): torchvision's ViT weights on timm's layout, the training it
needs (head-only first phase, gradient clipping, a prune lr, frozen patch embedding, ViT tokens in the
adapters' trainable set), per-layer pruning, the weight-density stop, the configs, the sweep's cost, and
the claim recomputed from a run tree."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from numerics import FLOAT32_STORED, assert_close_rel, assert_exact
from omegaconf import OmegaConf
from torchvision.models.vision_transformer import VisionTransformer

from spa import config_dir
from spa.adapters import apply_adapter
from spa.adapters.convert import freeze, head_only
from spa.models.torchvision_vit import load_timm_state, load_torchvision_vit, timm_state
from spa.pipeline import base_config, run
from spa.pruning.groups import ChannelGroup
from spa.pruning.schedule import Plan, select_local
from spa.pruning.transformer import transformer_groups
from spa.reporting.cost import pruning_steps, stated_epoch_seconds, sweep_epochs
from spa.reporting.vit import architecture_counts, at_density, claim, vit_report, vit_runs, vit_table
from spa.saved import load_task
from spa.settings import SettingError
from spa.training import build_scheduler
from spa.training.engine import train_one_epoch


def _tiny_pair(depth: int = 2):
    torch.manual_seed(0)
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=depth, num_heads=2, hidden_dim=32, mlp_dim=64,
                           num_classes=5).eval()
    for tensor in (tv.heads.head.weight, tv.encoder.pos_embedding, tv.class_token):   # torchvision zeroes these
        nn.init.normal_(tensor)
    tm = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                           mlp_ratio=2, num_classes=5).eval()
    return tv, tm


@pytest.mark.numerics
def test_torchvision_vit_weights_compute_the_same_function_in_timms_layout():
    tv, tm = _tiny_pair()
    tm.load_state_dict(timm_state(tv.state_dict()), strict=True)
    x = torch.randn(3, 3, 32, 32).double()
    tv.double(), tm.double()                      # the same function written twice: exact, so float64
    assert_exact(tm(x), tv(x)) and tv(x).abs().mean() > 0.1
    # older torchvision files name the MLP linear_1 / linear_2
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in tv.state_dict().items()}
    assert timm_state(old).keys() == timm_state(tv.state_dict()).keys()


def test_torchvision_weights_load_without_the_head_and_refuse_another_layout():
    tv, tm = _tiny_pair()
    head = tm.head.weight.detach().clone()
    load_timm_state(tm, timm_state(tv.state_dict()), "tiny")
    assert torch.equal(tm.head.weight, head)                     # the run's new head stays
    assert torch.equal(tm.blocks[1].attn.qkv.weight, tv.encoder.layers[1].self_attention.in_proj_weight)
    deeper, _ = _tiny_pair(depth=3)
    with pytest.raises(ValueError, match="unexpected.*blocks.2"):
        load_timm_state(tm, timm_state(deeper.state_dict()), "tiny")
    with pytest.raises(ValueError, match="ViT_B_16_Weights.IMAGENET1K_V1"):
        load_torchvision_vit(tm, "ViT_B_16_Weights.NOT_A_TAG")


def test_torchvision_weights_offline_name_the_fix(monkeypatch):
    from torchvision.models import ViT_B_16_Weights

    def offline(self, *args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(ViT_B_16_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="backbone.torchvision_weights=null"):
        load_torchvision_vit(_tiny_pair()[1], "ViT_B_16_Weights.IMAGENET1K_V1")


def test_gradient_clipping_bounds_each_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = [(torch.randn(8, 4) * 100, torch.randint(0, 3, (8,)))]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, data, optimizer, torch.device("cpu"), build_scheduler("constant", optimizer, 1, 1),
                    clip_grad_norm=0.5)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm() == pytest.approx(0.5, rel=1e-4)          # lr 1 x the clipped norm (the raw one is far larger)


def test_head_only_trains_the_head_alone_and_restores_the_trainable_set():
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    apply_adapter(model, "splora", rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"cls_token", "pos_embed"} <= trainable                # the ViT tokens learn with the adapters
    assert "patch_embed.proj.bias" in trainable
    with head_only(model):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    freeze(model, ["patch_embed"])
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    with pytest.raises(ValueError, match="backbone.frozen names 'stem'"):
        freeze(model, ["stem"])


def test_local_scope_keeps_the_same_fraction_of_every_group():
    groups = [ChannelGroup("a", ["a"], 12, kind="heads", unit=4), ChannelGroup("b", ["b"], 100),
              ChannelGroup("c", ["c"], 3)]
    scores = {"a": torch.arange(12.0).flip(0), "b": torch.arange(100.0), "c": torch.tensor([2.0, 1.0, 3.0])}
    removed = select_local(groups, scores, 0.75, {"a": 12, "b": 100, "c": 3})
    assert removed == {"a": [9, 10, 11], "b": list(range(25)), "c": [1]}   # 9 / 75 / 2 (2.25 -> 2) kept
    removed = select_local(groups, scores, 0.05, {"a": 12, "b": 100, "c": 3})
    assert [len(removed[g]) for g in "abc"] == [11, 95, 2]           # never below one unit
    assert Plan(1000, 0.05, 0.25).density_after(15) == pytest.approx(0.25)


def _vit_run(compose_cfg, *extra):
    cfg = compose_cfg("backbone=test_vit", "adapter=splora_r8", "pruning=weight", "pruning.scope=local",
                      "schedule.density=weights", "schedule.step_fraction=0.2", "schedule.target_density=0.6",
                      "schedule.recovery_epochs=1", "schedule.recovery_lr_scale=0.25", "train.scheduler=constant",
                      "train.head_epochs=1", "train.epochs=1", "train.clip_grad_norm=1.0",
                      "optim.lr=0.02", "backbone.frozen=[patch_embed]", *extra)
    return cfg, run(cfg)


@pytest.mark.numerics
def test_a_vit_run_stops_at_its_weight_density_with_the_iclr_training(compose_cfg):
    cfg, summary = _vit_run(compose_cfg)
    rundir = summary["run_dir"]
    steps = pd.read_csv(f"{rundir}/steps.csv")
    wd = steps["weight_density"]
    # the first step at or below the target, before the filter plan's last (4 steps of 20 %, to 20 %)
    assert wd.iloc[0] == 1.0 and wd.iloc[-1] <= 0.6 < wd.iloc[-2] and len(steps) < 5
    assert wd.to_list() == pytest.approx((steps["params_deployable"] / steps["params_deployable"].iloc[0]).to_list(),
                                         abs=1e-6)
    epochs = [json.loads(line) for line in open(f"{rundir}/epochs.jsonl")]
    phases = [(e["phase"], e["lr"]) for e in epochs]
    # the unpruned run it starts from trained the head alone first; every recovery at lr x 0.25
    assert phases[:2] == [("head", 0.02), ("train", 0.02)]
    assert [lr for phase, lr in phases if phase == "recover"] == pytest.approx([0.005] * (len(steps) - 1))
    # every block keeps the same heads and MLP channels (pruning.scope=local)
    from spa.saved import restore
    payload = torch.load(f"{rundir}/model.pt", weights_only=True)
    model = timm.create_model("test_vit", num_classes=4, img_size=32)
    restore(model, payload["structure"])
    assert len({(b.attn.num_heads, b.mlp.fc1.out_features) for b in model.blocks}) == 1
    assert len(transformer_groups(model)) == 2 * len(model.blocks)
    # the frozen patch embedding is the base's: task.pt on a fresh base rebuilds the fused model.pt exactly
    model.load_state_dict(payload["state_dict"])
    unpruned = Path(rundir).parents[2] / "none" / "splora_r8" / "seed_1"
    base = timm.create_model("test_vit", num_classes=4, img_size=32)
    start = torch.load(unpruned / "checkpoint.pt", weights_only=True)["state_dict"]
    base.load_state_dict({k: v for k, v in start.items() if k in base.state_dict()}, strict=False)
    assert torch.equal(payload["state_dict"]["patch_embed.proj.bias"], base.patch_embed.proj.bias)
    loaded = load_task(base.eval(), f"{rundir}/task.pt").eval().double()
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():   # float64 forwards: model.pt holds the fused weights rounded to float32 once
        assert_close_rel(loaded(x), model.eval().double()(x), FLOAT32_STORED, "task.pt on a fresh base vs model.pt")


def test_weight_density_settings_are_checked_before_a_run_directory(compose_cfg, tmp_path):
    for override, message in (("schedule.density=params", "schedule.density"),
                              ("pruning.scope=layer", "pruning.scope"),
                              ("schedule.recovery_lr_scale=0", "schedule.recovery_lr_scale"),
                              ("train.clip_grad_norm=-1", "train.clip_grad_norm"),
                              ("backbone.frozen=[stem]", "backbone.frozen names 'stem'")):
        with pytest.raises(SettingError, match=message):
            _vit_run(compose_cfg, override)
    with pytest.raises(SettingError, match="pruning.round_to=1"):
        _vit_run(compose_cfg, "pruning.round_to=8")
    with pytest.raises(SettingError, match="torchvision_weights='ViT_B_16_Weights.NOPE'"):
        _vit_run(compose_cfg, "backbone.weights=pretrained", "+backbone.torchvision_weights=ViT_B_16_Weights.NOPE")
    assert not (tmp_path / "results" / "runs").exists()


def _compose(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("dataset,adapter,lr,scale,head", [
    ("cifar10", "finetune", 0.00625, 1 / 3, 10), ("cifar100", "finetune", 0.00625, 0.1, 10),
    ("cifar100", "splora_r8", 0.1875, 1 / 3, 10), ("flowers102", "splora_r8", 0.1875, 1 / 3, 25),
    ("stanford_cars", "finetune", 0.00625, 1 / 3, 25)])
def test_vit_iclr_composes_the_papers_settings(dataset, adapter, lr, scale, head):
    cfg = OmegaConf.to_container(_compose("experiment=vit_iclr", f"dataset={dataset}", f"adapter={adapter}"),
                                 resolve=True)
    assert (cfg["optim"]["lr"], cfg["schedule"]["recovery_lr_scale"]) == pytest.approx((lr, scale))
    assert (cfg["train"]["head_epochs"], cfg["train"]["epochs"]) == (head, head)       # init_epochs // 2 twice
    assert (cfg["train"]["batch_size"], cfg["train"]["scheduler"], cfg["train"]["clip_grad_norm"]) == \
        (16, "onecycle", 1.0)
    assert cfg["backbone"]["torchvision_weights"] == "ViT_B_16_Weights.IMAGENET1K_V1"
    assert cfg["backbone"]["frozen"] == ["patch_embed"] and cfg["dataset"]["image_size"] == 224
    assert (cfg["pruning"]["criterion"], cfg["pruning"]["scope"]) == ("weight", "local")
    assert (cfg["schedule"]["density"], cfg["schedule"]["target_density"], cfg["schedule"]["step_fraction"]) == \
        ("weights", 0.25, 0.05)
    sweep = _compose("experiment=vit_iclr", hydra_cfg=True).hydra.sweeper.params
    assert str(sweep.dataset).split(",") == ["cifar10", "cifar100", "flowers102", "cats_vs_dogs", "stanford_cars"]
    assert (str(sweep.adapter), str(sweep.seed)) == ("finetune,splora_r8", "1,2,3")


def test_the_mini_base_stage_takes_its_own_optimiser_and_trains_the_patch_embedding():
    base = base_config(_compose("experiment=vit_iclr_mini", "adapter=splora_r8"))
    assert base.optim._target_ == "torch.optim.AdamW" and "momentum" not in base.optim
    assert (base.train.head_epochs, list(base.backbone.frozen), base.adapter.kind) == (0, [], "finetune")
    main = OmegaConf.to_container(_compose("experiment=vit_iclr_mini", "adapter=splora_r8"), resolve=True)
    assert (main["optim"]["lr"], main["optim"]["momentum"]) == (0.75, 0.9)


def test_sweep_cost_counts_the_head_phase_and_the_weight_stop():
    epochs = sweep_epochs("vit_iclr")
    cifar = epochs[epochs["dataset"] == "cifar10"]
    assert cifar[cifar["phase"] == "initial"]["epochs"].sum() == 2 * 3 * 20
    # 5 % steps: 25 % of the filters after 15, 25 % of the weights after 16; 10 recovery epochs; 2 learners x 3 seeds
    assert cifar[cifar["phase"] == "recover"]["epochs"].sum() == 16 * 10 * 6
    assert "score" not in set(cifar["phase"])                                 # weight magnitude reads no data
    assert pruning_steps(Plan(1, 0.05, 0.05), "weights") == 19 and pruning_steps(Plan(1, 0.05, 0.25), "filters") == 15
    assert pruning_steps(Plan(1, 0.1, 0.25), "weights") == 8        # where every vit_iclr_mini run stopped
    mini = sweep_epochs("vit_iclr_mini")
    assert sorted(set(mini.loc[mini["phase"] == "recover", "density"])) == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                                         0.8, 0.9])
    seconds, note = stated_epoch_seconds("vit_iclr")
    assert set(seconds) == {"cifar10", "cifar100", "flowers102", "cats_vs_dogs", "stanford_cars"} and "stated" in note


# (weight density, top1, learned) per step of each synthetic run; the claim's values are worked out by hand below
STEPS = {
    ("cifar10", "finetune", 1): [(1.0, 90.0, 1000), (0.5, 80.0, 500), (0.3, 60.0, 300), (0.2, 40.0, 200)],
    ("cifar10", "finetune", 2): [(1.0, 92.0, 1000), (0.25, 50.0, 250)],
    ("cifar10", "splora_r8", 1): [(1.0, 91.0, 100), (0.3, 89.0, 40), (0.2, 85.0, 30)],
    ("cifar10", "splora_r8", 2): [(1.0, 91.0, 100), (0.26, 88.0, 35), (0.16, 78.0, 25)],
    ("cats_vs_dogs", "finetune", 1): [(1.0, 95.0, 800), (0.4, 90.0, 400), (0.24, 70.0, 240)],
    ("cats_vs_dogs", "splora_r8", 1): [(1.0, 94.0, 80), (0.28, 93.0, 40), (0.24, 89.0, 36)],
    ("flowers102", "splora_r8", 1): [(1.0, 70.0, 90), (0.2, 60.0, 20)],     # no fine-pruning: not in the claim
    ("flowers102", "finetune", 1): [(1.0, 80.0, 900), (0.5, 70.0, 450)],    # never reaches 25 %
}


def _tree(root, collapsed: dict | None = None):
    """The synthetic runs; ``collapsed``: {(dataset, adapter, seed): [flag per step]} adds the flag column."""
    for (dataset, adapter, seed), steps in STEPS.items():
        run = root / dataset / "vit_mini" / "weight" / adapter / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({
            "dataset": dataset, "backbone": "vit_mini", "adapter": adapter, "pruning": "weight", "seed": seed,
            "versions": {"torch": "2.14.1"}}))
        pd.DataFrame([{"step": i, "density": wd, "weight_density": wd, "top1": top1, "params_learned": learned,
                       "macs": 1000 * wd} for i, (wd, top1, learned) in enumerate(steps)]).assign(
            **({"collapsed": collapsed.get((dataset, adapter, seed), [False] * len(steps))} if collapsed else {})
        ).to_csv(run / "steps.csv", index=False)
    return root


def test_the_claim_is_recomputed_as_the_sentence_reads(tmp_path):
    runs = vit_runs(_tree(tmp_path / "runs"))
    by = {(r.dataset, r.adapter, r.seed): r for r in runs.itertuples()}
    assert by[("cifar10", "finetune", 1)].top1_at == pytest.approx(50.0)        # halfway from 0.3 (60) to 0.2 (40)
    assert by[("cifar10", "finetune", 2)].top1_at == pytest.approx(50.0)        # a step exactly at 25 %
    assert by[("cifar10", "splora_r8", 2)].top1_at == pytest.approx(87.0)       # 88 - 0.1 x 10
    assert by[("flowers102", "finetune", 1)].top1_at is None or pd.isna(by[("flowers102", "finetune", 1)].top1_at)
    result = claim(vit_table(runs))
    # CIFAR-10: SPLoRA (87 + 87) / 2 - FT (50 + 50) / 2 = +37; learned FT (250 + 250) / 2 / SPLoRA (35 + 34) / 2
    # Cats & Dogs: SPLoRA 93 - 4 x (0.03 / 0.04) = 90, FT 90 - 20 x (0.15 / 0.16) = 71.25: +18.75;
    # learned FT 400 - 160 x 0.9375 = 250, SPLoRA 40 - 4 x 0.75 = 37
    assert [r["dataset"] for r in result["per_dataset"]] == ["cifar10", "cats_vs_dogs"]
    assert [r["delta"] for r in result["per_dataset"]] == pytest.approx([37.0, 18.75])
    assert result["delta"] == pytest.approx((37.0 + 18.75) / 2)
    assert result["ratio"] == pytest.approx((250 / 34.5 + 250 / 37) / 2)
    assert at_density(pd.DataFrame({"step": [0, 1], "weight_density": [1.0, 0.3], "top1": [9, 8]}), "top1") is None


def test_the_vit_report_writes_its_table_claims_and_figure(tmp_path):
    out = vit_report(_tree(tmp_path / "runs"), tmp_path / "tables", tmp_path / "figures", "vit_x")
    claims = out["claims"].read_text()
    assert "+27.88" in claims and "+43" in claims and "6.8×" in claims and "CIFAR-10 +37.00" in claims
    table = pd.read_csv(out["csv"])
    assert len(table) == 6 and table.loc[table["dataset"] == "flowers102", "reached"].to_list() == [0, 1]
    assert "—" in out["md"].read_text() and out["figure0"].is_file()


def test_a_collapse_around_the_claims_density_marks_its_cell_and_the_claim(tmp_path):
    # fine-pruning's CIFAR-10 seed 1 collapsed at its last step (0.2), one of the two steps around 25 %
    out = vit_report(_tree(tmp_path / "runs", {("cifar10", "finetune", 1): [False, False, False, True]}),
                     tmp_path / "tables", tmp_path / "figures", "vit_x")
    md = out["md"].read_text()
    assert "50.00 ± 0.00 (2) †" in md and "†: collapsed" in md and md.count("†") == 3   # at 25 %, last step, legend
    claims = out["claims"].read_text()
    assert "not evidence: collapsed on CIFAR-10 (†)" in claims and "collapsed on CIFAR-10, Cats" not in claims
    clean = vit_report(_tree(tmp_path / "clean"), tmp_path / "t2", tmp_path / "f2", "vit_y")
    assert "†" not in clean["md"].read_text() and "not evidence" not in clean["claims"].read_text()


def test_architecture_counts_need_no_training_and_match_the_counts_by_hand():
    rows = architecture_counts("test_vit", 4, {"ft": ("finetune", {}), "sp": ("splora", {"rank": 8})},
                               step_fraction=0.2, density=0.5, kwargs={"img_size": 32}, image_size=32)
    ft, sp = rows
    model = timm.create_model("test_vit", num_classes=4, img_size=32)
    patch = sum(p.numel() for p in model.patch_embed.parameters())
    assert ft["learned_unpruned"] == sum(p.numel() for p in model.parameters()) - patch
    assert sp["learned_unpruned"] == 48_452 - 64     # test_pear's count by hand, less the frozen patch bias
    # at half the weights, fine-pruning learns about half its weights; SPLoRA's A factors and extras stay
    assert 0.3 < ft["learned_at"] / ft["learned_unpruned"] < 0.55
    assert 0.5 < sp["learned_at"] / sp["learned_unpruned"] < 1


@pytest.mark.slow      # two full-size ViT-B/16 (86 M parameters each, random weights)
@pytest.mark.numerics
def test_torchvision_vit_b_16_maps_onto_timms_vit_base_patch16_224_exactly():
    from torchvision.models import vit_b_16
    torch.manual_seed(0)
    tv = vit_b_16(weights=None).eval()
    nn.init.normal_(tv.heads.head.weight, std=0.02)
    tm = timm.create_model("vit_base_patch16_224", num_classes=1000).eval()
    tm.load_state_dict(timm_state(tv.state_dict()), strict=True)      # every tensor, the head included
    x = torch.randn(1, 3, 224, 224).double()
    tv.double(), tm.double()                      # the same function written twice: exact, so float64
    with torch.no_grad():
        assert_exact(tm(x), tv(x))
