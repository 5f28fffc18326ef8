"""Structured pruning: dependency groups, exact per-step counts, selection by score, criteria
against hand computation, the pipeline's steps.csv, resume after a kill, and reload."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from numerics import FLOAT32_STORED, assert_close_rel, assert_exact
from torch.utils.data import DataLoader, TensorDataset

from spa import pipeline
from spa.adapters import apply_adapter, fuse
from spa.models import apply_cifar_stem, create_backbone
from spa.pruning.groups import build_graph, channel_groups, producer_filters
from spa.pruning.importance import GradientImportance, TaylorImportance, WeightImportance, group_scores, normalize
from spa.pruning.schedule import Plan, select_channels
from spa.pruning.session import PruningSession, count_macs, layer_widths
from spa.saved import load_backbone, load_task
from spa.utils import seed_everything


def small_resnet(adapter: str | None = "splora") -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3, layers=[1, 1, 1, 1], channels=[16, 32, 32, 64],
                              zero_init_last=False)
    apply_cifar_stem(model)
    if adapter:
        apply_adapter(model, adapter, **({"rank": 2} if adapter == "splora" else {}), init_range=0.05)
    return model


def loader(n=16, seed=0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=8)


def test_resnet50_groups_count_the_papers_filters():
    model = apply_cifar_stem(timm.create_model("resnet50", num_classes=10))
    apply_adapter(model, "splora", rank=8)
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    assert producer_filters(groups) == 26_560                 # docs/method.md §2
    residual = sorted((g.root, g.filters_per_channel, g.size) for g in groups if g.filters_per_channel > 1)
    assert residual == [("layer1.0.downsample.0", 4, 256), ("layer2.0.downsample.0", 5, 512),
                        ("layer3.0.downsample.0", 7, 1024), ("layer4.0.downsample.0", 4, 2048)]
    assert len(groups) == 37


@pytest.mark.parametrize("adapter", ["finetune", "splora", "sppara"])
def test_a_step_removes_exactly_its_budget_and_the_network_runs(adapter):
    model = small_resnet(None if adapter == "finetune" else adapter)
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    plan = Plan(session.original_filters, 0.1, 0.3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for step in (1, 2):
        kept = session.kept_filters
        result = session.step(step, plan, TaylorImportance(), loader(), torch.device("cpu"))
        assert result.removed_filters == plan.budget(step, kept) == kept - plan.kept_after(step)
        assert session.kept_filters == plan.kept_after(step)
    widths = layer_widths(model)
    for g in session.groups:                                           # every producer has the group's width
        assert all(widths[p][0] == g.size >= 1 for p in g.producers)
    assert widths["fc"][1] == next(g.size for g in session.groups if "layer4.0.downsample" in g.root)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen   # base stays frozen


def test_kept_channels_are_those_with_the_highest_group_scores():
    model = small_resnet()
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    group = next(g for g in session.groups if g.root == "layer2.0.conv1")
    original = model.layer2[0].conv1.weight.detach().clone()
    scores = {g.root: torch.full((g.size,), 10.0, dtype=torch.float64) for g in session.groups}
    scores[group.root] = torch.arange(group.size, dtype=torch.float64).flip(0)   # channel 0 is the best
    selection = select_channels(session.groups, scores, budget=5)
    assert selection == {"layer2.0.conv1": [27, 28, 29, 30, 31]}
    session.apply(1, selection)
    assert torch.equal(model.layer2[0].conv1.weight, original[:27])
    assert model.layer2[0].conv2.weight.shape[1] == 27                 # the consumer's inputs follow


def test_selection_never_empties_a_group_and_skips_overshooting_channels():
    from spa.pruning.groups import ChannelGroup
    groups = [ChannelGroup("a", ["a"], 2), ChannelGroup("res", ["r1", "r2", "r3"], 3)]
    scores = {"a": torch.tensor([0.0, 0.1]), "res": torch.tensor([0.01, 0.02, 0.5])}
    assert select_channels(groups, scores, budget=4) == {"a": [0], "res": [0]}   # 1 + 3 filters
    assert select_channels(groups, scores, budget=2) == {"a": [0]}               # a residual channel would overshoot
    assert select_channels(groups, scores, budget=100) == {"a": [0], "res": [0, 1]}


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        net[1].running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    return net.eval()


@pytest.mark.numerics
def test_criteria_match_hand_computation(float64):
    net = tiny_net()
    net.pretrained_cfg = {"classifier": "5"}
    groups = channel_groups(net, build_graph(net, torch.zeros(1, 2, 5, 5)))
    assert [g.producers for g in groups] == [["0"]]
    data = DataLoader(TensorDataset(torch.randn(6, 2, 5, 5), torch.tensor([0, 1, 0, 1, 1, 0])),
                                   batch_size=3)
    # by hand: a = conv output, dL/da by autograd on the same batches, mean over (n, h, w), summed
    grad_sum, taylor_sum = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for x, y in data:
        a = net[0](x)
        a.retain_grad()
        F.cross_entropy(net[1:](a), y).backward()
        grad_sum += a.grad.mean(dim=(0, 2, 3)).double()
        taylor_sum += (a * a.grad).detach().mean(dim=(0, 2, 3)).double()
        net.zero_grad()
    dev = torch.device("cpu")
    assert_exact(GradientImportance().score(net, groups, data, dev)["0"], grad_sum, what="gradient")
    assert_exact(TaylorImportance().score(net, groups, data, dev)["0"], taylor_sum, what="taylor")
    bn = net[1]
    folded = net[0].weight.detach().abs().sum(dim=(1, 2, 3)) * bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    assert_exact(WeightImportance().score(net, groups)["0"], folded.double().detach(), what="weight")
    # normalisation per layer: L1 for weight/LRP, L2 (of |v|) for gradient/Taylor
    v = torch.tensor([1.0, -3.0, 4.0], dtype=torch.float64)
    assert torch.allclose(normalize(v, "l1"), torch.tensor([1, 3, 4], dtype=torch.float64) / 8)
    assert torch.allclose(normalize(v, "l2"), torch.tensor([1, 3, 4], dtype=torch.float64) / 26 ** 0.5)


def test_every_normalisation_by_hand_and_mean_stops_the_widest_layer_going_first():
    """l1 / l2 shrink a channel's score with its layer's width, so ranked globally the widest layer
    empties first (issue 26: Lite0's conv_head); mean scores each channel against its own layer."""
    from spa.pruning.groups import ChannelGroup
    v = torch.tensor([1.0, -3.0, 4.0], dtype=torch.float64)
    expected = {"l1": [1 / 8, 3 / 8, 4 / 8], "mean": [1 / (8 / 3), 3 / (8 / 3), 4 / (8 / 3)], "max": [0.25, 0.75, 1.0],
                "none": [1.0, 3.0, 4.0], "l2": [1 / 26 ** 0.5, 3 / 26 ** 0.5, 4 / 26 ** 0.5]}
    for kind, values in expected.items():
        assert normalize(v, kind).tolist() == pytest.approx(values), kind
    with pytest.raises(ValueError, match="use one of l1, l2, mean, max, none"):
        normalize(v, "median")
    groups = [ChannelGroup("narrow", ["narrow"], 4), ChannelGroup("wide", ["wide"], 64)]
    raw = {"narrow": torch.tensor([0.5, 1.0, 1.0, 1.5]), "wide": torch.full((64,), 1.1)}
    by = {kind: select_channels(groups, group_scores(groups, raw, kind), budget=1) for kind in ("l1", "mean")}
    assert list(by["l1"]) == ["wide"]                        # 1.1 / 70.4 per wide channel against 0.5 / 4
    assert by["mean"] == {"narrow": [0]}                     # the weakest channel relative to its own layer


def test_the_guard_caps_a_layer_and_hands_the_rest_of_the_budget_elsewhere():
    """Widths 16 and 1,280, identical raw scores per channel: l1 scores the wide layer's channels
    1 / 1,280 against 1 / 16, so a budget of 700 comes all from it (by hand). With at most half of a
    layer's channels allowed to go (floors 8 and 640), a budget of 645 takes 640 from the wide layer and
    the other 5 from the narrow one; a budget of 700 can get only 648; a layer kept whole gives none."""
    from spa.pruning.groups import ChannelGroup
    groups = [ChannelGroup("narrow", ["narrow"], 16), ChannelGroup("wide", ["wide"], 1280)]
    raw = {"narrow": torch.ones(16), "wide": torch.ones(1280)}
    ranked = group_scores(groups, raw, "l1")
    free = select_channels(groups, ranked, budget=700)
    assert list(free) == ["wide"] and len(free["wide"]) == 700
    floors = {"narrow": 8, "wide": 640}                       # what max_group_pruning=0.5 gives (640 of 1,280)
    capped = select_channels(groups, ranked, budget=645, keep_at_least=floors)
    assert len(capped["wide"]) == 640 and len(capped["narrow"]) == 5         # the full budget, all the same
    short = select_channels(groups, ranked, budget=700, keep_at_least=floors)
    assert sum(map(len, short.values())) == 648                             # what the floors leave
    whole = select_channels(groups, ranked, budget=10, keep_at_least={"wide": 1280})    # ignore: kept whole
    assert list(whole) == ["narrow"] and len(whole["narrow"]) == 10


def test_the_guard_in_a_pruning_session_floors_ignore_and_a_step_it_cannot_make():
    model = small_resnet(None)
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    floors = session.floors(0.5, ["fc*", "conv1"])
    assert floors["conv1"] == session.original_sizes["conv1"]                 # ignored: kept whole
    assert all(floors[r] == s - s // 2 for r, s in session.original_sizes.items() if r != "conv1")
    with pytest.raises(ValueError, match=r"pruning.ignore=\['nothing\*'\] matches no prunable layer; .*conv1"):
        session.check_ignore(["nothing*"])
    # known before any training: a target below what the guard allows is refused, naming the lowest density
    with pytest.raises(ValueError, match=r"go down to 0\.5\d* filter density, above schedule.target_density=0.2: "
                                         r"raise the target to 0\.5"):
        session.check_reachable(0.2, 0.5, ["conv1"])
    session.check_reachable(0.6, 0.5, ["conv1"])
    session.check_reachable(0.01, None, [])                  # no guard: nothing to hold back
    plan = Plan(session.original_filters, 0.4, 0.2)
    result = session.step(1, plan, WeightImportance(), None, torch.device("cpu"), max_group_pruning=0.5,
                          ignore=["conv1"])
    assert result.removed_filters == plan.budget(1, session.original_filters)   # the full budget
    widths = layer_widths(model)
    assert widths["conv1"][0] == session.original_sizes["conv1"]
    with pytest.raises(ValueError, match="the lowest density they allow is 0.5"):
        session.step(2, plan, WeightImportance(), None, torch.device("cpu"), max_group_pruning=0.5, ignore=["conv1"])


def test_group_scores_average_the_producers_normalised_scores():
    from spa.pruning.groups import ChannelGroup
    g = ChannelGroup("r", ["p", "q"], 2)
    out = group_scores([g], {"p": torch.tensor([1.0, 3.0]), "q": torch.tensor([2.0, 2.0])}, "l1")
    assert torch.allclose(out["r"], torch.tensor([(0.25 + 0.5) / 2, (0.75 + 0.5) / 2]))


@pytest.mark.numerics
def test_weight_criterion_uses_the_adapter_folded_filter(float64):
    model = small_resnet("splora")
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    layer = model.layer1[0].conv1
    with torch.no_grad():
        layer.B.mul_(1000)                                     # a large adapter update changes the filter norms
    scores = WeightImportance().score(model, groups)["layer1.0.conv1"]
    bn = model.layer1[0].bn1
    expected = layer.fused_weight().abs().sum(dim=(1, 2, 3)) * bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    assert_exact(scores, expected.double().detach())


def test_macs_fall_with_pruning():
    model = small_resnet()
    dense = count_macs(model, (32, 32))
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    session.step(1, Plan(session.original_filters, 0.5, 0.5), WeightImportance(), None, torch.device("cpu"))
    assert count_macs(model, (32, 32)) < 0.6 * dense


def test_macs_count_attention_whichever_kernel_runs():
    """Dense DeiT-S and ResNet-50 at 224 px cost their published 4.6 and 4.09 GMACs whatever the torch:
    the fused attention kernel (which some torch versions' counters miss) counts the same as timm's
    explicit-softmax path, i.e. Q·K^T and attn·V, once each."""
    deit = timm.create_model("deit_small_patch16_224", pretrained=False)
    fused = count_macs(deit, (224, 224))
    for block in deit.blocks:
        block.attn.fused_attn = False
    assert fused == count_macs(deit, (224, 224)) == pytest.approx(4.60e9, rel=0.005)
    assert count_macs(timm.create_model("resnet50", pretrained=False), (224, 224)) == pytest.approx(4.09e9, rel=0.005)


def prune_overrides(*extra: str) -> list[str]:
    return ["pruning=taylor", "adapter=splora_r8", "schedule.step_fraction=0.2", "schedule.target_density=0.4",
            "schedule.recovery_epochs=1", "schedule.score_batches=2", "train.epochs=1",
            "train.max_steps_per_epoch=3", *extra]


def read_steps(run_dir: Path) -> list[dict]:
    with open(run_dir / "steps.csv") as handle:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(handle)]


def test_pruned_run_records_every_step(compose_cfg):
    summary = pipeline.run(compose_cfg(*prune_overrides()))
    run_dir = Path(summary["run_dir"])
    rows = read_steps(run_dir)
    assert [float(r["density"]) for r in rows] == [1.0, 0.8, 0.6, 0.4]
    assert all(float(a["macs"]) > float(b["macs"]) for a, b in zip(rows, rows[1:]))
    assert all(int(a["params_learned"]) > int(b["params_learned"]) for a, b in zip(rows, rows[1:]))
    assert rows[0]["top1_before"] == "" and all(r["top1_before"] != "" for r in rows[1:])
    assert summary["metrics"]["density"] == 0.4 and summary["pruning_steps"] == 3
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [(e["phase"], e["step"]) for e in epochs] == [("train", 0), ("recover", 1), ("recover", 2), ("recover", 3)]
    history = json.loads((run_dir / "pruning.json").read_text())
    assert [s["step"] for s in history["steps"]] == [1, 2, 3]
    assert (history["structure"], history["unit"]) == ("channels", "filters")


def test_killed_run_resumes_with_the_same_records(compose_cfg, monkeypatch):
    reference = pipeline.run(compose_cfg(*prune_overrides("exp_name=uninterrupted")))
    original_step = PruningSession.step

    def killed_at_step_3(self, step, *args, **kwargs):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return original_step(self, step, *args, **kwargs)
    monkeypatch.setattr(PruningSession, "step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose_cfg(*prune_overrides("exp_name=killed")))
    killed_dir = Path(reference["run_dir"].replace("uninterrupted", "killed"))
    assert not (killed_dir / "summary.json").exists() and len(read_steps(killed_dir)) == 3
    monkeypatch.setattr(PruningSession, "step", original_step)
    resumed = pipeline.run(compose_cfg(*prune_overrides("exp_name=killed")))
    assert read_steps(killed_dir) == read_steps(Path(reference["run_dir"]))
    assert resumed["metrics"] == reference["metrics"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    epochs = lambda d: strip([json.loads(x) for x in (d / "epochs.jsonl").read_text().splitlines()])  # noqa: E731
    assert epochs(killed_dir) == epochs(Path(reference["run_dir"]))


@pytest.mark.numerics
def test_pruned_model_and_task_reload_with_identical_outputs(compose_cfg):
    summary = pipeline.run(compose_cfg(*prune_overrides()))
    run_dir = Path(summary["run_dir"])
    trained = load_backbone("test_resnet", 4, weights=str(run_dir / "model.pt"), load_head=True)[0].eval()
    x = torch.randn(2, 3, 32, 32)
    seed_everything(1)                       # the run's base: test_resnet's random init under seed 1
    base, _ = create_backbone("test_resnet", 4)                       # a fresh, unpruned timm model
    rebuilt = load_task(base, run_dir / "task.pt").eval()             # safe torch.load inside
    # float64 forwards: model.pt holds the fused weights rounded to float32 once, the task recomputes them
    assert_close_rel(rebuilt.double()(x.double()), trained.double()(x.double()), FLOAT32_STORED, "task vs model.pt")
    trained.float()
    assert not any(hasattr(m, 'adapter_parameters') for m in trained.modules())   # plain, fused layers
    assert sum(w[0] for w in layer_widths(trained).values()) < sum(w[0] for w in layer_widths(base).values())
    assert sum(p.numel() for p in trained.parameters()) == summary["params"]["deployable"]


def test_lora_rows_refuse_pruning(compose_cfg):
    with pytest.raises(ValueError, match="adapter=splora_r8"):
        pipeline.run(compose_cfg("pruning=taylor", "adapter=lora_r8"))


def test_criteria_share_one_unpruned_training(compose_cfg):
    taylor = pipeline.run(compose_cfg(*prune_overrides()))
    unpruned = Path(taylor["run_dir"]).parents[2] / "none" / "splora_r8" / "seed_1"
    mtime = (unpruned / "summary.json").stat().st_mtime_ns
    weight = pipeline.run(compose_cfg(*prune_overrides("pruning=weight", "schedule.recovery_epochs=2")))
    assert (unpruned / "summary.json").stat().st_mtime_ns == mtime                  # trained once
    first = lambda d: [json.loads(x) for x in (Path(d) / "epochs.jsonl").read_text().splitlines()][0]  # noqa: E731
    assert first(taylor["run_dir"]) == first(weight["run_dir"]) == first(unpruned)
    assert read_steps(Path(taylor["run_dir"]))[0] == read_steps(Path(weight["run_dir"]))[0]
    assert json.loads((unpruned / "summary.json").read_text())["metrics"]["test_top1"] == \
        float(read_steps(Path(weight["run_dir"]))[0]["top1"])


def vit(adapter: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    if adapter:
        apply_adapter(model, adapter, rank=2, init_range=0.05)
    return model


def test_adapter_models_cost_the_macs_of_their_fused_model():
    from spa.adapters import fuse
    for model in (small_resnet("splora"), vit("splora")):
        assert count_macs(model, (32, 32)) == count_macs(fuse(model), (32, 32))


@pytest.mark.parametrize("adapter", [None, "splora"])
@pytest.mark.parametrize("criterion", [TaylorImportance, WeightImportance])
def test_vit_prunes_mlp_channels_and_whole_heads(adapter, criterion):
    model = vit(adapter)
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    assert {g.kind for g in session.groups} == {"heads", "channels"} and len(session.groups) == 12
    plan = Plan(session.original_filters, 0.2, 0.6)
    result = session.step(1, plan, criterion(), loader(), torch.device("cpu"))
    assert result.removed_filters == plan.budget(1, session.original_filters)
    # force one head out of block 0 and check timm's bookkeeping and the weights that remain
    attn = model.blocks[0].attn
    qkv_before, proj_before = attn.qkv.weight.detach().clone(), attn.proj.weight.detach().clone()
    session.apply(2, {"blocks.0.attn.qkv": [0]})
    hd, dim = attn.head_dim, 2 * attn.head_dim
    assert attn.num_heads == 1 and attn.attn_dim == hd and attn.qkv.weight.shape[0] == 3 * hd
    keep_rows = [s * dim + hd + j for s in range(3) for j in range(hd)]
    assert torch.equal(attn.qkv.weight, qkv_before[keep_rows])
    assert torch.equal(attn.proj.weight, proj_before[:, hd:])
    if adapter:
        assert attn.qkv.B.shape[0] == 3 * hd and attn.proj.A.shape[1] == hd and not attn.qkv.weight.requires_grad
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    fresh = vit(adapter)
    PruningSession(fresh, torch.zeros(1, 3, 32, 32)).replay(session.history)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model(x))


# ----------------------------------------------------------------------------- LRP
def lrp_parts(model, size=32):
    from spa.data import normalization
    from spa.pruning.lrp import composite, input_bounds
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, size, size)))
    low, high = input_bounds(*normalization("cifar"))
    return groups, composite(groups, low.expand(4, 3, size, size), high.expand(4, 3, size, size))


def test_lrp_conserves_relevance_on_a_bias_free_cnn():
    from spa.pruning.lrp import relevance
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, bias=False)).eval()
    net.pretrained_cfg = {"classifier": "6"}
    _, comp = lrp_parts(net, size=8)
    x = torch.rand(4, 3, 8, 8)
    r_in, inner, start = relevance(net, x, torch.tensor([0, 1, 2, 0]), comp, ["2"])
    positive = start > 0                      # relevance is conserved for positive true-class logits
    ratio = r_in.sum(dim=(1, 2, 3))[positive] / start[positive]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.01), ratio
    assert torch.allclose(inner["2"].sum(dim=(1, 2, 3))[positive] / start[positive], torch.ones_like(ratio), atol=0.01)


def test_lrp_conserves_relevance_through_timm_residual_blocks():
    from spa.pruning.lrp import relevance
    model = small_resnet(None).eval()
    with torch.no_grad():
        model.fc.bias.zero_()             # fresh BN merges to zero bias; the head bias would absorb relevance
    groups, comp = lrp_parts(model)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = model(x).argmax(dim=1)            # positive true-class logits: conservation is defined
    r_in, inner, start = relevance(model, x, y, comp, ["conv1", "layer2.0.downsample.0"])
    assert (start > 0).all()
    for r in (r_in, inner["conv1"]):      # all relevance passes the stem
        ratio = r.sum(dim=(1, 2, 3)) / start
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.01), ratio
    assert "forward" not in vars(model.layer1[0])                                # canonizer removed again


def test_lrp_scores_every_producer_and_fuses_adapters_first():
    from spa.data import normalization
    from spa.pruning.lrp import LRPImportance, input_bounds
    model = small_resnet("splora")
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    scores = LRPImportance(*input_bounds(*normalization("cifar"))).score(model, groups, loader(), torch.device("cpu"))
    widths = layer_widths(model)
    assert set(scores) == {p for g in groups for p in g.producers}
    assert all(s.shape == (widths[n][0],) and (s >= 0).all() and s.sum() > 0 for n, s in scores.items())
    assert any(hasattr(m, "adapter_parameters") for m in model.modules())        # the model itself is untouched


@pytest.mark.numerics
def test_one_pass_zplus_on_non_negative_inputs_gives_zennits_scores(float64):
    """The fast z⁺ (one modified pass on convs fed by a ReLU) changes the cost, not the scores."""
    from spa.data import normalization
    from spa.pruning.lrp import LRPImportance, composite, input_bounds, nonnegative_input_convs
    model = small_resnet("splora")
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    bounds = input_bounds(*normalization("cifar"))
    plain = fuse(model).eval()                  # LRP scores the fused model
    convs = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d)]
    fast = nonnegative_input_convs(plain, next(iter(loader()))[0])
    assert convs[0] not in fast and set(convs[1:]) == fast    # all but the stem read a ReLU's output
    comp, ctx = composite(groups, *bounds, fast), {}
    rules = {n: type(comp.module_map(ctx, n, plain.get_submodule(n))).__name__ for n in convs}
    assert rules[convs[0]] == "ZBox" and {rules[n] for n in convs[1:]} == {"ZPlusNonNegative"}
    one = LRPImportance(*bounds).score(model, groups, loader(), torch.device("cpu"))
    two = LRPImportance(*bounds, fast_zplus=False).score(model, groups, loader(), torch.device("cpu"))
    assert set(one) == set(two)
    for name in one:                            # the same rule computed two ways: exact, so float64
        assert_exact(one[name], two[name], what=name)


@pytest.mark.parametrize("criterion", ["weight", "gradient", "taylor", "lrp", "random"])
@pytest.mark.parametrize("adapter", ["finetune", "splora_r8", "sppara"])
def test_every_criterion_with_every_learner_on_a_resnet(compose_cfg, criterion, adapter):
    summary = pipeline.run(compose_cfg(*prune_overrides(f"pruning={criterion}", f"adapter={adapter}",
                                                        "schedule.target_density=0.6", "train.max_steps_per_epoch=1")))
    assert summary["metrics"]["density"] == 0.6 and summary["pruning_steps"] == 2


@pytest.mark.parametrize("criterion", ["weight", "taylor"])
@pytest.mark.parametrize("adapter", ["finetune", "splora_r8"])
def test_weight_and_taylor_with_every_learner_on_a_vit(compose_cfg, criterion, adapter):
    summary = pipeline.run(
        compose_cfg(
            *prune_overrides(
                f"pruning={criterion}",
                f"adapter={adapter}",
                "backbone=test_vit",
                "schedule.target_density=0.6",
                "train.max_steps_per_epoch=1",
            )
        )
    )
    assert summary["metrics"]["density"] == pytest.approx(0.6, abs=0.01)


def test_an_unpruned_run_without_its_checkpoint_is_trained_again_for_the_pruned_run(compose_cfg, caplog):
    """Records without weights (a committed run on a fresh clone, or an older run): the pruned run that starts
    from it has it trained again instead of stopping (pipeline.with_weights)."""
    unpruned = pipeline.run(compose_cfg("adapter=splora_r8", "train.epochs=1", "train.max_steps_per_epoch=3"))
    (Path(unpruned["run_dir"]) / "checkpoint.pt").unlink()
    caplog.set_level("WARNING")
    pruned = pipeline.run(compose_cfg(*prune_overrides()))
    assert "training it again" in caplog.text and (Path(unpruned["run_dir"]) / "checkpoint.pt").is_file()
    assert pruned["metrics"]["density"] < 1.0


def test_round_to_moves_the_kept_width_of_touched_groups_to_multiples():
    from spa.pruning.groups import ChannelGroup

    groups = [
        ChannelGroup("a", ["a"], 32),
        ChannelGroup("b", ["b"], 20),
        ChannelGroup("c", ["c"], 6),
        ChannelGroup("heads", ["heads"], 6, kind="heads", unit=4),
    ]
    scores = {
        "a": torch.arange(32.0),
        "b": torch.arange(20.0) + 0.5,
        "c": torch.arange(6.0) + 100,
        "heads": torch.arange(6.0) + 0.25,
    }
    plain = select_channels(groups, scores, budget=25)
    assert {k: len(v) for k, v in plain.items()} == {"a": 7, "b": 6, "heads": 1}  # 7 + 6 + 12 filters
    rounded = select_channels(groups, scores, budget=25, round_to=8)
    # a: 25 kept -> 24; b: 14 kept -> 16; heads are not rounded; c untouched
    assert {k: len(v) for k, v in rounded.items()} == {"a": 8, "b": 4, "heads": 1}
    assert rounded["a"] == list(range(8)) and rounded["b"] == list(range(4))  # the lowest scored go
    emptied = select_channels(groups, scores, budget=1000, round_to=8)  # 1 kept -> at least 8
    assert emptied["a"] == list(range(24)) and emptied["b"] == list(range(12))
    with pytest.raises(ValueError, match="round_to"):
        select_channels(groups, scores, budget=3, round_to=0)


def test_pruning_with_round_to_leaves_multiples_of_8_and_a_working_network():
    model = small_resnet("splora").eval()
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    before = {g.root: g.size for g in session.groups}
    plan = Plan(session.original_filters, 0.3, 0.4)
    for step in (1, 2):
        session.step(step, plan, WeightImportance(), None, torch.device("cpu"), round_to=8)
    sizes = {g.root: g.size for g in session.groups}
    assert any(sizes[r] != before[r] for r in sizes)
    assert all(sizes[r] % 8 == 0 for r in sizes if sizes[r] != before[r])
    assert abs(session.density - 0.4) < 0.1  # the budget is kept approximately
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_bad_round_to_is_refused_before_the_run_directory_is_written(compose_cfg):
    cfg = compose_cfg(*prune_overrides("pruning.round_to=0"))
    with pytest.raises(ValueError, match="round_to"):
        pipeline.run(cfg)
    assert not Path(cfg.paths.run_dir).exists()


def test_the_structure_registry_picks_channels_for_cnns_and_heads_mlp_for_transformers():
    from spa.pruning.structures import STRUCTURES, structure_for
    assert list(STRUCTURES) == ["heads_mlp", "mlp", "channels"]
    vit, cnn = timm.create_model("test_vit", num_classes=3), timm.create_model("test_resnet", num_classes=3)
    assert structure_for(vit).name == "heads_mlp" and structure_for(cnn).name == "channels"
    session = PruningSession(vit, torch.zeros(1, 3, *vit.pretrained_cfg["input_size"][1:]))
    kinds = {g.kind for g in session.groups}
    assert session.structure.unit == "filters" and kinds == {"heads", "channels"} and session.context is None
