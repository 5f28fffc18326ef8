"""Dependency groups from Torch-Pruning's ``DependencyGraph`` (low-level graph/group API only; we
select channels ourselves), with pruners for our adapter layers.

A *channel group* is a set of coupled channels: removing channel j removes output j of every
*producer* (each conv/linear that writes those channels: e.g. all convs feeding one residual
addition) and the matching inputs of every consumer, BatchNorm entries included. Density counts
producer filters, as the paper does (ResNet-50: 26,560 conv filters).
"""
from __future__ import annotations

import signal
import threading
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
# a split, slice or unbind of the channels: the model keeps its sizes in attributes (MixNet's split sizes,
# GhostNet's slice to out_chs) that pruning does not update, so groups through one are kept whole
FIXED_SIZE_OPS = (tp.ops._SplitOp, tp.ops._SliceOp, tp.ops._UnbindOp)


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


def _prune_layer(layer: nn.Module, idxs: Sequence[int], out: bool) -> None:
    """Remove output (``out``) or input channels ``idxs`` of one conv / linear layer, adapted or not."""
    if type(layer) in PRUNERS:
        pruner = PRUNERS[type(layer)]
        prune = pruner.prune_out_channels if out else pruner.prune_in_channels
    elif isinstance(layer, nn.Linear):
        prune = tp.prune_linear_out_channels if out else tp.prune_linear_in_channels
    else:
        prune = tp.prune_conv_out_channels if out else tp.prune_conv_in_channels
    prune(layer, list(idxs))


def prune_rows(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Remove output channels ``idxs`` of one layer (no coupling followed)."""
    _prune_layer(layer, idxs, out=True)


def prune_cols(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Remove input channels ``idxs`` of one layer (no coupling followed)."""
    _prune_layer(layer, idxs, out=False)


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
    # producer -> (its rows in the group, the group channel of each): only where a producer writes part of
    # the group (a concatenation, a split), else None and every producer writes every channel
    coverage: dict[str, tuple[list[int], list[int]]] | None = None
    whole: str = ""                            # why the group is kept whole ("" = prunable)

    @property
    def filters_per_channel(self) -> int:
        """Producer filters (output rows) one unit of the group removes: one per producer for
        channels, 3·head_dim qkv rows for an attention head."""
        return 3 * self.unit if self.kind == "heads" else len(self.producers)

    def costs(self) -> list[int]:
        """Producer filters that removing each channel removes: :attr:`filters_per_channel` for every
        channel, or, with :attr:`coverage`, how many producers write it."""
        if self.coverage is None:
            return [self.filters_per_channel] * self.size
        counts = [0] * self.size
        for _, channels in self.coverage.values():
            for c in channels:
                counts[c] += 1
        return counts

    @property
    def filters(self) -> int:
        return sum(self.costs())

    def rows(self) -> set[tuple[str, int]]:
        """(producer, row) pairs the group removes, for telling a group from a part of another."""
        if self.coverage is None:
            return {(p, r) for p in self.producers for r in range(self.size)}
        return {(p, r) for p, (rows, _) in self.coverage.items() for r in rows}

    def unit_scores(self, row_scores: torch.Tensor) -> torch.Tensor:
        """Per-unit scores from a producer's per-row scores (a head sums its q, k and v rows)."""
        if self.kind == "heads":
            return row_scores.reshape(3, self.size, self.unit).sum(dim=(0, 2))
        return row_scores

    def producer_scores(self, producer: str, row_scores: torch.Tensor) -> torch.Tensor:
        """``producer``'s scores in group channel order; NaN at the channels it does not write."""
        if self.coverage is None:
            return self.unit_scores(row_scores)
        rows, channels = self.coverage[producer]
        out = torch.full((self.size,), float("nan"), dtype=row_scores.dtype)
        out[channels] = row_scores[rows]
        return out


def _out_fn(module: nn.Module):
    if type(module) in PRUNERS:
        return PRUNERS[type(module)].prune_out_channels
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (groups > 1 with more than one input or output per group,
    or a depthwise conv with a channel multiplier): removing one of its channels would leave its groups
    unequal, so its channel groups are kept whole."""
    groups = int(getattr(module, "groups", 1) or 1)
    weight = getattr(module, "weight", None)
    if groups <= 1 or not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return False
    return not (weight.shape[0] == groups and weight.shape[1] == 1)


def _group(group, names: dict[nn.Module, str], heads: list[nn.Module]) -> ChannelGroup | None:
    """Our view of one Torch-Pruning group: its producers, the rows each writes (kept only where some
    producer writes part of the group), the BatchNorm after each, and whether a grouped conv keeps it
    whole."""
    producers, bn_of, coverage, whole = [], {}, {}, ""
    size, partial = len(group.items[0].idxs), False
    for item in group.items:
        dep, target = item.dep, item.dep.target.module
        if not whole and grouped(target):
            whole = f"grouped conv {names[target]} ({target.groups} groups of {target.weight.shape[1]} inputs each)"
        if not whole and isinstance(target, FIXED_SIZE_OPS):
            whole = f"a {type(target).__name__.strip('_').removesuffix('Op').lower()} at sizes the model stores"
        if getattr(dep.handler, "__name__", "") == "prune_out_channels" and isinstance(target, PRODUCER_TYPES) \
                and target not in heads and names[target] not in coverage:
            producers.append(names[target])
            pairs = list(zip((int(i) for i in item.idxs),
                             (int(i) for i in (item.root_idxs if item.root_idxs is not None else item.idxs))))
            valid = [(r, c) for r, c in pairs if r < target.weight.shape[0] and c < size]
            coverage[names[target]] = ([r for r, _ in valid], [c for _, c in valid])
            partial |= len(valid) != len(pairs) or any(r != c for r, c in valid) or len(valid) != size \
                or int(target.weight.shape[0]) != size
        if isinstance(target, nn.modules.batchnorm._BatchNorm) and isinstance(dep.source.module, PRODUCER_TYPES):
            bn_of[names[dep.source.module]] = names[target]
    if not producers:
        return None
    if partial and not whole:
        whole = "its producers write parts of it (a concatenation joined to another tensor)"
    root = group.items[0].dep.target.module
    return ChannelGroup(root=names[root], producers=producers, size=size, bn_of=bn_of,
                        coverage=coverage if partial else None, whole=whole)


TRACE_SECONDS = 120.0     # the longest a model's groups may take to trace (ResNet-50: about 2 s)


@contextmanager
def _trace_deadline(seconds: float = TRACE_SECONDS) -> Iterator[None]:
    """TimeoutError if the block runs longer than ``seconds`` (main thread on POSIX; elsewhere no limit).
    Torch-Pruning's index mapping can loop without end on a channel slice added back into the tensor it
    was cut from (ReXNet's partial residual): a run then stops with a message instead of hanging."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(
            f"Torch-Pruning's dependency trace of this network did not finish within {seconds:.0f} s (its index "
            f"mapping loops on some channel slices, e.g. ReXNet's partial residual): channel pruning does not "
            f"support it. Fix: adapt it without channel pruning (pruning=none), or prune its blocks "
            f"(pruning=block_magnitude)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[ChannelGroup]:
    """Every channel group of ``model`` (not the head's outputs), in a stable order; a group a grouped
    conv takes part in is marked :attr:`ChannelGroup.whole` (the session never prunes it)."""
    names = {module: name for name, module in model.named_modules()}
    heads = [model.get_submodule(h) for h in head_names(model)]
    with _trace_deadline():
        groups = [g for group in graph.get_all_groups(ignored_layers=heads, root_module_types=list(PRODUCER_TYPES))
                  if (g := _group(group, names, heads)) is not None]
    # A depthwise conv pruned to one channel is no longer coupled to its input by Torch-Pruning (groups ==
    # in_channels == 1 reads as a plain conv), and the group comes back twice: once from the depthwise conv
    # alone, once from the conv before it with both. Its channels are counted once: the part is dropped.
    rows = [g.rows() for g in groups]
    kept = [g for i, g in enumerate(groups) if not any(rows[i] < rows[j] for j in range(len(groups)) if j != i)]
    return sorted(kept, key=lambda g: g.root)


def prune_group(model: nn.Module, graph: tp.DependencyGraph, root: str, idxs: Sequence[int]) -> None:
    """Remove channels ``idxs`` (current indices) of the group rooted at ``root``, everywhere."""
    module = model.get_submodule(root)
    group = graph.get_pruning_group(module, _out_fn(module), idxs=sorted(int(i) for i in idxs))
    group.prune()


def group_layers(model: nn.Module, graph: tp.DependencyGraph, root: str,
                 names: dict[nn.Module, str]) -> set[tuple[str, str]]:
    """The (module name, "in" | "out") widths that removing a channel of the group rooted at ``root``
    shrinks: its producers' outputs, its consumers' inputs, both for a depthwise conv in it. Read from
    the group Torch-Pruning would prune (nothing is removed); ``names``: module -> name of ``model``."""
    module = model.get_submodule(root)
    group = graph.get_pruning_group(module, _out_fn(module), idxs=[0])
    dims = set()
    for item in group.items:
        target, handler = item.dep.target.module, getattr(item.dep.handler, "__name__", "")
        if target in names and isinstance(target, PRODUCER_TYPES) and handler in ("prune_out_channels",
                                                                                  "prune_in_channels"):
            depthwise = getattr(target, "groups", 1) > 1 and not grouped(target)
            for dim in (("in", "out") if depthwise else ("out",) if handler == "prune_out_channels" else ("in",)):
                dims.add((names[target], dim))
    return dims


def producer_filters(groups: list[ChannelGroup]) -> int:
    """Filters (output channels of producers) over all groups: the count density refers to."""
    return sum(g.filters for g in groups)
