"""Dependency groups from Torch-Pruning's ``DependencyGraph`` (low-level graph/group API only; we
select channels ourselves), with pruners for our adapter layers.

A *channel group* is a set of coupled channels: removing channel j removes output j of every
*producer* (each conv/linear that writes those channels: e.g. all convs feeding one residual
addition) and the matching inputs of every consumer, BatchNorm entries included. Density counts
producer filters, as the paper does (ResNet-50: 26,560 conv filters).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from spa.adapters.base import AdapterLayer
from spa.adapters.convert import head_names
from spa.adapters.layers import (
    SPLoRAConv2d,
    SPLoRADepthwiseConv2d,
    SPLoRALinear,
    SPPaRAConv2d,
    SPPaRADepthwiseConv2d,
)

DEPTHWISE_ADAPTER_TYPES = (SPLoRADepthwiseConv2d, SPPaRADepthwiseConv2d)
ADAPTER_TYPES = (SPLoRAConv2d, SPPaRAConv2d, SPLoRALinear, *DEPTHWISE_ADAPTER_TYPES)
PRODUCER_TYPES = (nn.Conv2d, nn.Linear, *ADAPTER_TYPES)


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    return sorted(set(range(n)) - set(int(i) for i in idxs))


class AdapterPruner(tp.pruner.function.BasePruningFunc):
    """Output channel j / input channel i of an adapter layer: the layer keeps the other rows /
    columns of W, of its adapter tensors and of the bias itself (``AdapterLayer.keep_rows`` /
    ``keep_cols``). Base weights stay frozen, adapter tensors and biases trainable."""

    TARGET_MODULES = ADAPTER_TYPES

    def prune_out_channels(self, layer: AdapterLayer, idxs: Sequence[int]) -> AdapterLayer:
        _refuse_grouped(layer)
        layer.keep_rows(_keep(layer.weight.shape[0], idxs))
        return layer

    def prune_in_channels(self, layer: AdapterLayer, idxs: Sequence[int]) -> AdapterLayer:
        _refuse_grouped(layer)
        layer.keep_cols(_keep(layer.weight.shape[1], idxs))
        return layer

    def get_out_channels(self, layer: AdapterLayer) -> int:
        return layer.weight.shape[0]

    def get_in_channels(self, layer: AdapterLayer) -> int:
        return layer.weight.shape[1] * getattr(layer, "groups", 1)


def _refuse_grouped(layer: AdapterLayer) -> None:
    if getattr(layer, "groups", 1) > 1:
        raise NotImplementedError(
            f"pruning a grouped adapter conv ({layer.groups} groups of {layer.weight.shape[1]} inputs each) is not "
            f"supported; depthwise convs (one input per group) are. Prune this network with adapter=finetune, or "
            f"adapt it without pruning (pruning=none).")


class DepthwiseAdapterPruner(AdapterPruner):
    """A depthwise adapter conv (in = out = groups): channel j is input j *and* filter j, so pruning
    its inputs and its outputs is one operation (Torch-Pruning couples the two when both functions
    are the same): rows of W, B (SPLoRA) or P (SPPaRA) and the bias, and one group fewer. A
    (rank × 1) is shared by every channel and stays."""

    TARGET_MODULES = DEPTHWISE_ADAPTER_TYPES

    def prune_out_channels(self, layer: AdapterLayer, idxs: Sequence[int]) -> AdapterLayer:
        keep = _keep(layer.weight.shape[0], idxs)
        layer.keep_rows(keep)
        layer.groups = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_in_channels(self, layer: AdapterLayer) -> int:
        return layer.weight.shape[0]


ADAPTER_PRUNER = AdapterPruner()
DEPTHWISE_ADAPTER_PRUNER = DepthwiseAdapterPruner()
PRUNERS = {t: DEPTHWISE_ADAPTER_PRUNER if t in DEPTHWISE_ADAPTER_TYPES else ADAPTER_PRUNER for t in ADAPTER_TYPES}


@contextmanager
def _all_require_grad(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning traces autograd: frozen base weights must take part while the graph is built."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """The dependency graph of ``model``. The head stays in the graph (its inputs shrink with the
    last stage); it is only excluded as a group root, by :func:`channel_groups`."""
    was_training = model.training
    model.eval()
    with _all_require_grad(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_input, customized_pruners=dict(PRUNERS), verbose=False)
    model.train(was_training)
    return graph


@dataclass
class ChannelGroup:
    """Coupled channels: ``root`` is the module whose outputs define the group's indices."""
    root: str
    producers: list[str]                       # modules whose output channels (filters) the group removes
    size: int                                  # channels (or heads) in the group now
    bn_of: dict[str, str] = field(default_factory=dict)   # producer -> the BatchNorm right after it
    kind: str = "channels"                     # "channels", or "heads" (attention heads of a ViT block)
    unit: int = 1                              # head_dim for a head group

    @property
    def filters_per_channel(self) -> int:
        """Producer filters (output rows) one unit of the group removes: one per producer for
        channels, 3·head_dim qkv rows for an attention head."""
        return 3 * self.unit if self.kind == "heads" else len(self.producers)

    def unit_scores(self, row_scores: torch.Tensor) -> torch.Tensor:
        """Per-unit scores from a producer's per-row scores (a head sums its q, k and v rows)."""
        if self.kind == "heads":
            return row_scores.reshape(3, self.size, self.unit).sum(dim=(0, 2))
        return row_scores


def _out_fn(module: nn.Module):
    if type(module) in PRUNERS:
        return PRUNERS[type(module)].prune_out_channels
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` (not the head's outputs), in a stable order."""
    names = {module: name for name, module in model.named_modules()}
    heads = [model.get_submodule(h) for h in head_names(model)]
    groups: list[ChannelGroup] = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=list(PRODUCER_TYPES)):
        producers, bn_of = [], {}
        for item in group.items:
            dep, target = item.dep, item.dep.target.module
            handler = getattr(dep.handler, "__name__", "")
            if handler == "prune_out_channels" and isinstance(target, PRODUCER_TYPES) and target not in heads:
                if names[target] not in producers:
                    producers.append(names[target])
            source = dep.source.module
            if isinstance(target, nn.modules.batchnorm._BatchNorm) and isinstance(source, PRODUCER_TYPES):
                bn_of[names[source]] = names[target]
        if not producers:
            continue
        root = group.items[0].dep.target.module
        groups.append(ChannelGroup(root=names[root], producers=producers, size=len(group.items[0].idxs),
                                   bn_of=bn_of))
    # A depthwise conv pruned to one channel is no longer coupled to its input by Torch-Pruning (groups ==
    # in_channels == 1 reads as a plain conv), and the group comes back twice: once from the depthwise conv
    # alone, once from the conv before it with both. Its channels are counted once: the part is dropped.
    whole = [g for g in groups if not any(set(g.producers) < set(o.producers) for o in groups)]
    return sorted(whole, key=lambda g: g.root)


def prune_group(model: nn.Module, graph: tp.DependencyGraph, root: str, idxs: Sequence[int]) -> None:
    """Remove channels ``idxs`` (current indices) of the group rooted at ``root``, everywhere."""
    module = model.get_submodule(root)
    group = graph.get_pruning_group(module, _out_fn(module), idxs=sorted(int(i) for i in idxs))
    group.prune()


def producer_filters(groups: list[ChannelGroup]) -> int:
    """Filters (output channels of producers) over all groups: the count density refers to."""
    return sum(g.size * g.filters_per_channel for g in groups)
