"""What pruning does on the layers the plain channel trace cannot prune: grouped convs and channel
splits (their groups kept whole, listed, and the rest of the network pruned), concatenations
(filters counted per producer), and token-mixing models (the hidden channels of their MLP blocks)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from spa.adapters import apply_adapter, fuse
from spa.pruning.importance import CRITERIA
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession
from spa.pruning.structures import STRUCTURES, structure_for


class GroupedNet(nn.Module):
    """conv 3→8, a grouped conv 8→8 (2 groups), conv 8→6, pooled to a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.conv3(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class SplitNet(nn.Module):
    """conv 3→8 split at fixed sizes (5, 3) into two convs, concatenated, pooled to a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.splits = [5, 3]
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(5, 4, 1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        left, right = torch.split(self.conv1(x), self.splits, dim=1)
        return self.fc(torch.cat([self.a(left), self.b(right)], dim=1).mean(dim=(2, 3)))


def batches(size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, 3, (4,), generator=g))]


def one_step(model: nn.Module, size: int, fraction: float, criterion: str = "weight") -> PruningSession:
    session = PruningSession(model, torch.zeros(1, 3, size, size))
    plan = Plan(session.original_filters, fraction, 1 - fraction)
    session.step(1, plan, CRITERIA[criterion](), batches(size), torch.device("cpu"), 1)
    return session


@pytest.mark.parametrize("adapter", [None, "splora"])
def test_groups_through_a_grouped_conv_are_kept_whole_listed_and_the_rest_is_pruned(adapter):
    torch.manual_seed(0)
    model = GroupedNet()
    if adapter:
        apply_adapter(model, adapter, rank=2)
    session = PruningSession(model, torch.zeros(1, 3, 8, 8))
    whole = {g.root: g.whole for g in session.groups if g.whole}
    assert set(whole) == {"conv1", "conv2"} and all("grouped conv conv2 (2 groups of 4 inputs each)" in w
                                                      for w in whole.values())
    assert [line.split(":")[0] for line in session.left_out()] == ["conv1", "conv2"]
    assert session.original_filters == 8 + 8 + 6
    plan = Plan(session.original_filters, 0.1, 0.9)          # a budget of 2 filters: conv3's only
    session.step(1, plan, CRITERIA["weight"](), None, torch.device("cpu"))
    assert model.conv1.weight.shape[0] == 8 and tuple(model.conv2.weight.shape[:2]) == (8, 4)
    assert model.conv3.weight.shape[0] == 4 and model.fc.weight.shape[1] == 4
    assert session.kept_filters == 20 and model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_a_target_the_whole_groups_make_unreachable_is_refused_with_the_reachable_density():
    session = PruningSession(GroupedNet(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"2 channel groups kept whole .* 0\.773"):
        session.check_reachable(0.5, None, ())        # conv3 keeps 1 of 6: (8 + 8 + 1) / 22


def test_a_split_at_stored_sizes_keeps_its_group_whole_and_the_network_still_runs():
    torch.manual_seed(0)
    model = SplitNet()
    session = one_step(model, 8, 0.25, "taylor")
    assert [g.root for g in session.groups if g.whole] == ["conv1"] and "split" in session.left_out()[0]
    assert model.conv1.weight.shape[0] == 8 and model.splits == [5, 3]
    assert model.a.weight.shape[0] + model.b.weight.shape[0] < 8          # the convs after the split lost filters
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_the_registry_tries_heads_then_mlp_blocks_then_the_channel_trace():
    assert list(STRUCTURES) == ["heads_mlp", "mlp", "channels"]
    assert structure_for(timm.create_model("test_vit", num_classes=3)).name == "heads_mlp"
    assert structure_for(timm.create_model("test_resnet", num_classes=3)).name == "channels"
    assert structure_for(tiny_mixer()).name == "mlp"


def tiny_mixer() -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer
    torch.manual_seed(0)
    model = MlpMixer(num_classes=3, img_size=32, patch_size=8, num_blocks=2, embed_dim=16)
    model.pretrained_cfg = {"classifier": "head"}      # as timm.create_model sets it
    return model


@pytest.mark.parametrize("adapter", [None, "splora"])
def test_a_token_mixing_model_loses_mlp_hidden_channels_and_its_fused_output_matches(adapter):
    model = tiny_mixer()
    if adapter:
        apply_adapter(model, adapter, rank=2)
    model.eval()
    session = PruningSession(model, torch.zeros(1, 3, 32, 32))
    roots = [g.root for g in session.groups]
    assert roots == ["blocks.0.mlp_tokens.fc1", "blocks.0.mlp_channels.fc1", "blocks.1.mlp_tokens.fc1",
                     "blocks.1.mlp_channels.fc1"]      # network order
    # token MLP: 16 tokens × 0.5 = 8 hidden; channel MLP: 16 × 4 = 64 hidden
    assert [g.size for g in session.groups] == [8, 64, 8, 64] and session.original_filters == 144
    assert [line.split(":")[0] for line in session.left_out()] == ["stem.proj"]
    plan = Plan(session.original_filters, 0.25, 0.75)
    session.step(1, plan, CRITERIA["taylor"](), batches(32), torch.device("cpu"), 1)
    assert session.kept_filters == 108
    for block in model.blocks:
        for mlp in (block.mlp_tokens, block.mlp_channels):
            assert mlp.fc1.weight.shape[0] == mlp.fc2.weight.shape[1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3)
        assert torch.allclose(fuse(model).eval()(x), out, atol=1e-5)


def test_a_depthwise_conv_between_fc1_and_fc2_loses_the_same_channels():
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    torch.manual_seed(0)
    model = PyramidVisionTransformerV2(depths=(1, 1, 1, 1), embed_dims=(8, 16, 16, 16), num_heads=(1, 1, 1, 1),
                                       mlp_ratios=(2, 2, 2, 2), num_classes=3).eval()
    model.pretrained_cfg = {"classifier": "head"}
    session = one_step(model, 32, 0.3)
    mlps = [stage.blocks[0].mlp for stage in model.stages]
    assert sum(m.fc1.weight.shape[0] for m in mlps) < 16 + 32 * 3 and session.structure.name == "mlp"
    for mlp in mlps:
        hidden = mlp.fc1.weight.shape[0]
        assert mlp.dwconv.weight.shape[0] == mlp.dwconv.groups == mlp.fc2.weight.shape[1] == hidden
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_scores_of_a_concatenation_joined_by_an_addition_are_placed_by_channel():
    """Two producers write halves of a group (cat), a third writes all of it (added): each channel's
    score is the mean over the producers that write it, and it costs as many filters."""
    from spa.pruning.groups import ChannelGroup
    from spa.pruning.importance import group_scores
    g = ChannelGroup(root="c", producers=["a", "b", "c"], size=4,
                     coverage={"a": ([0, 1], [0, 1]), "b": ([0, 1], [2, 3]), "c": ([0, 1, 2, 3], [0, 1, 2, 3])})
    scores = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0, 2.0]), "c": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    out = group_scores([g], scores, "none", "mean")["c"]
    assert torch.equal(out, torch.tensor([1.0, 2.0, 1.5, 1.5], dtype=out.dtype))
    assert g.costs() == [2, 2, 2, 2] and g.filters == 8
    assert torch.equal(group_scores([g], scores, "none", "max")["c"], torch.tensor([1.0, 3.0, 2.0, 2.0]))


def test_a_trace_that_does_not_finish_stops_with_a_message_naming_the_fix():
    import time

    from spa.pruning.groups import _trace_deadline
    with pytest.raises(TimeoutError, match=r"did not finish within 0 s.*pruning=none"):
        with _trace_deadline(0.2):
            time.sleep(2)
    time.sleep(0.3)          # the timer is cleared: nothing fires after the block


class ChannelsLastMlp(nn.Module):
    """conv, then an MLP of Linears on the NHWC map (EdgeNeXt's and ConvNeXt's layout), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.head(self.fc2(torch.relu(self.fc1(x))).mean(dim=(1, 2)))


@pytest.mark.parametrize("criterion", ["taylor", "gradient"])
def test_a_linear_on_an_nhwc_map_is_scored_per_output_channel(criterion):
    from spa.pruning.groups import ChannelGroup
    torch.manual_seed(0)
    model = ChannelsLastMlp()
    scores = CRITERIA[criterion]().score(model, [ChannelGroup(root="fc1", producers=["fc1"], size=16)], batches(4),
                                         torch.device("cpu"), 1)
    assert scores["fc1"].shape == (16,)            # 16 channels, not the map's 4 rows
    x, y = batches(4)[0]
    out = model.fc1(model.conv(x).permute(0, 2, 3, 1))
    grad = torch.autograd.grad(nn.functional.cross_entropy(model.head(model.fc2(torch.relu(out)).mean(dim=(1, 2))), y),
                               out)[0]
    stat = (out * grad if criterion == "taylor" else grad).mean(dim=(0, 1, 2)).double()
    assert torch.allclose(scores["fc1"], stat, rtol=1e-5, atol=1e-9)
