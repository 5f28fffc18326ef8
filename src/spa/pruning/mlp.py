"""Structured pruning of the hidden channels of MLP blocks, for timm models whose token mixing a
dependency trace cannot follow (windowed, pooled or grouped attention, token-mixing MLPs: Swin,
LeViT, MobileViT, EfficientFormer, EdgeNeXt, TinyViT, XCiT, ConViT, CoaT, PVT, MLP-Mixer, ResMLP).

Torch-Pruning traces such a model through every reshape and permute of its attention, and the index
mappings of those reshapes multiply until the trace runs out of memory. Their MLP blocks, however,
are self-contained: hidden channel j is row j of the first layer (``fc1``) and column j of the second
(``fc2``), plus channel j of whatever sits between them at the hidden width (a norm, a depthwise
conv). Those are the groups here, built from the block's layout (:data:`LAYOUTS`), like the ViT
structure of :mod:`spa.pruning.transformer`. The residual width, attention and convolutions outside
the MLPs stay whole; the session says which layers that leaves unpruned (:func:`left_out`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch.nn as nn
import torch_pruning as tp

from spa.models.heads import head_names
from spa.pruning.groups import PRODUCER_TYPES, PRUNERS, ChannelGroup, prune_cols, prune_rows

# MLP block class name -> (first layer, layers at the hidden width in between, second layer); paths are
# relative to the block. A layer the block lacks (timm's Mlp has no norm unless asked) is skipped.
LAYOUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "Mlp": ("fc1", ("norm",), "fc2"),
    "ConvMlp": ("fc1", ("norm",), "fc2"),
    "NormMlp": ("fc1", (), "fc2"),                    # its norm is at the input width, before fc1
    "ConvMlpWithNorm": ("fc1", ("norm1",), "fc2"),
    "MlpWithDepthwiseConv": ("fc1", ("dwconv",), "fc2"),
    "LevitMlp": ("ln1.linear", ("ln1.bn",), "ln2.linear"),
}
# a model with any of these modules mixes tokens in a way the channel trace does not follow
TOKEN_MIXERS = re.compile(r"Attention|Attn|GPSA|MHSA|MixerBlock|ResBlock")


def _mixes_tokens(model: nn.Module) -> bool:
    return any(TOKEN_MIXERS.search(type(m).__name__) for m in model.modules())


def fits(model: nn.Module) -> bool:
    """A token-mixing model with MLP blocks of a known layout (a ViT / DeiT takes the heads structure first)."""
    return _mixes_tokens(model) and bool(mlp_blocks(model))


def mlp_blocks(model: nn.Module) -> dict[str, tuple[str, list[str], str]]:
    """{block name: (first layer, hidden-width layers, second layer)} as full module names, in network order."""
    blocks = {}
    for name, module in model.named_modules():
        layout = LAYOUTS.get(type(module).__name__)
        if layout is None:
            continue
        first, between, second = layout
        prefix = f"{name}." if name else ""
        try:
            fc1, fc2 = module.get_submodule(first), module.get_submodule(second)
        except AttributeError:
            continue
        width = fc1.weight.shape[0]
        if fc2.weight.shape[1] * getattr(fc2, "groups", 1) != width:     # a gated MLP (fc1 writes 2 × hidden)
            continue
        present = [prefix + b for b in between if _has(module, b) and _at_width(module.get_submodule(b), width)]
        blocks[name] = (prefix + first, present, prefix + second)
    return blocks


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _at_width(layer: nn.Module, width: int) -> bool:
    """A layer between fc1 and fc2 that has channels to remove (an Identity or parameter-free one has none)."""
    weight = getattr(layer, "weight", None)
    return weight is not None and weight.shape[0] == width


def mlp_groups(model: nn.Module) -> list[ChannelGroup]:
    """One group per MLP block: its hidden channels, ``fc1`` the producer."""
    return [ChannelGroup(root=fc1, producers=[fc1], size=model.get_submodule(fc1).weight.shape[0],
                         bn_of={fc1: between[0]} if between and _is_bn(model.get_submodule(between[0])) else {})
            for fc1, between, _ in mlp_blocks(model).values()]


def _is_bn(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.batchnorm._BatchNorm)


def prune_mlp_group(model: nn.Module, group: ChannelGroup, idxs: Sequence[int]) -> None:
    """Remove hidden channels ``idxs`` of the block whose first layer is ``group.root``."""
    block = next((b for b in mlp_blocks(model).values() if b[0] == group.root), None)
    if block is None:
        raise KeyError(f"no MLP block has {group.root} as its first layer")
    fc1, between, fc2 = block
    idxs = sorted(int(i) for i in idxs)
    prune_rows(model.get_submodule(fc1), idxs)
    for name in between:
        _prune_between(model.get_submodule(name), idxs)
    prune_cols(model.get_submodule(fc2), idxs)


def _prune_between(layer: nn.Module, idxs: list[int]) -> None:
    """Channels ``idxs`` of a norm or depthwise conv at the hidden width."""
    if type(layer) in PRUNERS or isinstance(layer, (nn.Conv2d, nn.Linear)):
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            tp.prune_depthwise_conv_out_channels(layer, idxs)
        else:
            prune_rows(layer, idxs)       # a depthwise adapter conv prunes its groups with its rows
    elif _is_bn(layer):
        tp.prune_batchnorm_out_channels(layer, idxs)
    elif isinstance(layer, nn.LayerNorm):
        tp.prune_layernorm_out_channels(layer, idxs)
    elif isinstance(layer, nn.GroupNorm):
        tp.prune_groupnorm_out_channels(layer, idxs)
    else:
        raise NotImplementedError(f"pruning the hidden channels of {type(layer).__name__} is not supported")


def left_out(model: nn.Module) -> list[str]:
    """Conv / Linear layers (adapted or not) outside every MLP block and the head: the MLP structure
    leaves their channels whole."""
    inside = {n for fc1, between, fc2 in mlp_blocks(model).values() for n in (fc1, *between, fc2)}
    heads = head_names(model)
    return [n for n, m in model.named_modules() if isinstance(m, PRODUCER_TYPES) and n not in inside
            and not any(n == h or n.startswith(h + ".") for h in heads)
            and not any(n.startswith(i + ".") for i in inside)]
