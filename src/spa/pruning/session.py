"""A pruning session: the channel groups of one model (traced dependency groups for CNNs, block
groups for ViT/DeiT), and the history of what was removed, replayable on a fresh model
(checkpoints, resume, reload)."""
from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from spa.pruning.groups import group_layers, producer_filters
from spa.pruning.importance import Importance, group_scores
from spa.pruning.schedule import SCOPES, Plan, removed_filters, select_channels, select_local
from spa.pruning.structures import structure_for

log = logging.getLogger(__name__)

History = list[dict]   # [{"step": k, "removed": {group root: [current channel indices]}}]


@dataclass
class StepResult:
    step: int
    removed_filters: int
    kept_filters: int
    density: float
    selection: dict[str, list[int]] = field(default_factory=dict)


class PruningSession:
    """Prune ``model`` in place, step by step, through the groups of its structure
    (``spa.pruning.structures``: channels for CNNs, heads and MLP channels for ViT / DeiT)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, original_filters: int | None = None):
        self.model = model
        self.structure = structure_for(model)
        with torch.enable_grad():       # the CNNs' dependency graph is traced through autograd, even under no_grad
            self.context = self.structure.context(model, example_input)
        self.groups = self._groups()
        self.original_filters = original_filters or producer_filters(self.groups)
        self.original_sizes = {g.root: g.size for g in self.groups}   # built on the unpruned model
        self._unit_of = {p: g.root for g in self.groups for p in (g.root, *g.producers)}
        self.history: History = []
        if left_out := self.left_out():
            log.info("%d layers or channel groups are never pruned: %s", len(left_out), "; ".join(left_out))

    def original_unit(self, group) -> str:
        """The root, on the unpruned model, of the group ``group`` is (or is part of): a group re-traced
        after pruning may come out with another of its producers as root, or split."""
        for name in (group.root, *group.producers):
            if name in self._unit_of:
                return self._unit_of[name]
        raise KeyError(f"channel group {group.root} matches no group of the unpruned model")

    def _groups(self):
        return self.structure.groups(self.model, self.context)

    @property
    def kept_filters(self) -> int:
        return producer_filters(self.groups)

    @property
    def density(self) -> float:
        return self.kept_filters / self.original_filters

    def apply(self, step: int, selection: dict[str, list[int]]) -> StepResult:
        """Remove ``selection`` ({group root: channel indices}) and record it in the history."""
        removed = removed_filters(self.groups, selection)
        by_root = {g.root: g for g in self.groups}
        for root, idxs in selection.items():
            self.structure.remove(self.model, self.context, by_root[root], idxs)
        self.groups = self._groups()
        self.history.append({"step": step, "removed": {k: list(map(int, v)) for k, v in selection.items()}})
        return StepResult(step, removed, self.kept_filters, self.density, selection)

    def step(self, step: int, plan: Plan | None, criterion: Importance, loader: Iterable | None,
             device: torch.device, max_batches: int | None = None, reduction: str = "mean",
             round_to: int = 1, scope: str = "global", normalization: str | None = None,
             max_group_pruning: float | None = None, ignore: Sequence[str] = (),
             select: Callable[[list, dict, dict[str, int]], dict[str, list[int]]] | None = None) -> StepResult:
        """Score, select the step's budget of filters (``scope``: ``global``, ranked across the groups,
        kept widths rounded to multiples of ``round_to``; ``local``, the same fraction of every group:
        :func:`~spa.pruning.schedule.select_local`), remove them. ``normalization``: how each layer's
        scores are normalised before ranking (:data:`~spa.pruning.importance.NORMALIZATIONS`; None: the
        criterion's own, the paper's). The guard (global scope): ``max_group_pruning``, the fraction of a
        group's original channels that may ever go (None: the paper's rule, a group keeps one), and
        ``ignore``, globs of module names whose groups are kept whole; a step the floors leave short of
        its budget stops with an error naming the density they allow. ``select(groups, ranked scores,
        floors)`` replaces the plan's filter budget where given (a latency target: ``plan`` is None); an
        empty selection removes nothing and leaves the history as it was."""
        if scope not in SCOPES:
            raise ValueError(f"pruning.scope={scope!r}: use global (ranked across layers) or local (every layer alike)")
        scores = criterion.score(self.model, self.groups, loader, device, max_batches)
        ranked = group_scores(self.groups, scores, normalization or criterion.normalization, reduction)
        floors = self.floors(max_group_pruning, ignore)
        if select is not None:
            chosen = select(self.groups, ranked, floors)
            if not chosen:             # nothing left to cut: no step (and none in the history)
                return StepResult(step, 0, self.kept_filters, self.density, {})
            result = self.apply(step, chosen)
            log.info("pruning step %d: removed %d filters, density %.3f (%d / %d filters)", step,
                     result.removed_filters, result.density, result.kept_filters, self.original_filters)
            return result
        budget = plan.budget(step, self.kept_filters)
        selection = select_channels(self.groups, ranked, budget, round_to=round_to, keep_at_least=floors) \
            if scope == "global" else select_local(self.groups, ranked, plan.density_after(step), self.original_sizes)
        if (max_group_pruning is not None or ignore) and scope == "global":
            # short of the budget by the guard's doing: the same step without it gets further (both unrounded:
            # rounding alone leaves a step a little off its budget, with or without the guard)
            removed = removed_filters(self.groups, select_channels(self.groups, ranked, budget, keep_at_least=floors))
            if removed < budget and removed < removed_filters(self.groups, select_channels(
                    self.groups, ranked, budget, keep_at_least=self.whole())):
                room, reachable = self.room(floors), self.lowest_density(floors)
                raise ValueError(f"pruning step {step} needs {budget} filters but pruning.max_group_pruning="
                                 f"{max_group_pruning} and pruning.ignore={list(ignore)} leave {room}: the lowest "
                                 f"density they allow is {reachable:.3f}; raise schedule.target_density to it or "
                                 f"loosen the guard")
        result = self.apply(step, selection)
        log.info("pruning step %d: removed %d filters (budget %d), density %.3f (%d / %d filters)", step,
                 result.removed_filters, budget, result.density, result.kept_filters, self.original_filters)
        return result

    def group_layers(self) -> dict[str, set[tuple[str, str]]]:
        """{group root: the (layer, "in" | "out") widths its channels are} for every prunable group
        (:func:`~spa.pruning.groups.group_layers`): what a latency target needs; CNN channels only."""
        if self.structure.name != "channels":
            raise ValueError(f"schedule.target=latency prunes the channels of CNNs; this model is pruned by its "
                             f"{self.structure.name} structure: use schedule.target=density")
        names = {module: name for name, module in self.model.named_modules()}
        return {g.root: group_layers(self.model, self.context, g.root, names) for g in self.groups if not g.whole}

    def room(self, floors: dict[str, int]) -> int:
        """Filters the groups can still give under ``floors`` (every group keeps one at least)."""
        return sum(sum(sorted(g.costs(), reverse=True)[:max(0, g.size - max(1, floors.get(g.root, 0)))])
                   for g in self.groups)

    def lowest_density(self, floors: dict[str, int]) -> float:
        """The lowest filter density ``floors`` allow from the model as it is now."""
        return (self.kept_filters - self.room(floors)) / self.original_filters

    def check_reachable(self, target_density: float, max_group_pruning: float | None, ignore: Sequence[str]) -> None:
        """The guard lets the schedule reach ``target_density`` (checked on the unpruned model, before any
        training), else ValueError naming the lowest density it allows. Without a guard, nothing to check
        here (the paper's rule: a step that would empty a layer takes the next channel elsewhere)."""
        if max_group_pruning is None and not ignore and not self.whole():
            return
        lowest = self.lowest_density(self.floors(max_group_pruning, ignore))
        if lowest > target_density + 1e-9:
            whole = f" and {len(self.whole())} channel groups kept whole (session.left_out())" if self.whole() else ""
            raise ValueError(f"pruning.max_group_pruning={max_group_pruning} and pruning.ignore={list(ignore)}{whole} "
                             f"let the network go down to {lowest:.3f} filter density, above schedule.target_density="
                             f"{target_density}: raise the target to {math.ceil(lowest * 1000) / 1000} or more, or "
                             f"loosen the guard (a larger max_group_pruning, fewer ignore globs)")

    def ignored(self, ignore: Sequence[str]) -> set[str]:
        """Roots of the groups a module-name glob of ``ignore`` matches (any of their producers)."""
        return {g.root for g in self.groups if any(fnmatch.fnmatch(p, pattern) for p in g.producers
                                                   for pattern in ignore)}

    def check_ignore(self, ignore: Sequence[str]) -> None:
        """Every glob of ``ignore`` matches a prunable layer; else ValueError listing the candidates."""
        names = [p for g in self.groups for p in g.producers]
        unmatched = [pattern for pattern in ignore if not any(fnmatch.fnmatch(n, pattern) for n in names)]
        if unmatched:
            raise ValueError(f"pruning.ignore={unmatched} matches no prunable layer; the prunable layers are "
                             f"{names[:12]}{' ...' if len(names) > 12 else ''} (globs: e.g. 'conv_head', 'blocks.0.*')")

    def whole(self) -> dict[str, int]:
        """The groups no step may touch (``ChannelGroup.whole``: a grouped conv, a stored-size split or a
        partial concatenation takes part), at their width."""
        return {g.root: g.size for g in self.groups if g.whole}

    def left_out(self) -> list[str]:
        """What the session never prunes, one line each: the layers its structure leaves whole (the
        mlp structure's attention and convolutions), and each group kept whole with why."""
        return [*(f"{n}: outside the {self.structure.name} structure's units" for n in
                  self.structure.left_out(self.model)), *(f"{g.root}: {g.whole}" for g in self.groups if g.whole)]

    def floors(self, max_group_pruning: float | None, ignore: Sequence[str]) -> dict[str, int]:
        """The fewest channels each group may keep under the guard and :meth:`whole` (empty: neither)."""
        floors = dict(self.whole())
        if max_group_pruning is not None:     # keyed by today's roots, sized by the unpruned group's width
            for g in self.groups:
                size = self.original_sizes[self.original_unit(g)]
                floors[g.root] = max(floors.get(g.root, 1), size - math.floor(max_group_pruning * size + 1e-9))
        kept_whole = self.ignored(ignore) if ignore else set()
        for g in self.groups:
            if g.root in kept_whole:
                floors[g.root] = g.size
        return floors

    def replay(self, history: History) -> None:
        """Apply a recorded history to this (unpruned) model, in order."""
        for entry in history:
            self.apply(int(entry["step"]), entry["removed"])


def example_input(model: nn.Module, input_size: tuple[int, int] | list[int]) -> torch.Tensor:
    """A zero image batch of one for tracing or counting ``model``: on its parameters' device and in
    their dtype (a float64 model, as the equivalence tests build, traces in float64)."""
    param = next(model.parameters())
    return torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype)


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Output and input channels of every conv/linear-like layer, for tests and records."""
    widths = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() in (2, 4) and not isinstance(
                module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            widths[name] = [int(weight.shape[0]), int(weight.shape[1]) * int(getattr(module, "groups", 1))]
    return widths


def _attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: Any,
                     out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs (2 per MAC) of one scaled-dot-product attention: the two matmuls Q·K^T and attn·V, i.e.
    (batch·heads)·Lq·Lk·(d_qk + d_v) MACs, softmax and scaling not counted. Heads may be grouped (GQA):
    Lk and d_v come from the key/value shapes, batch·heads from the query's."""
    *lead, lq, d_qk = query_shape
    return 2 * math.prod(lead) * lq * key_shape[-2] * (d_qk + value_shape[-1])


# The attention kernels (fused or not) as FlopCounterMode sees them, each given the formula above, so the
# count does not depend on which kernels a torch version's counter knows (2.14 misses the CPU flash kernel).
# A mapped op is counted once and not decomposed, so nothing inside it is counted again; ops a torch lacks
# are skipped. The composite op normally decomposes before the counter sees it; its math path (and timm's
# fused_attn=False) goes through plain matmuls, which the counter counts itself.
_ATTENTION_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable")
MAC_FORMULAS = {getattr(torch.ops.aten, name): _attention_flops for name in _ATTENTION_OPS
                if hasattr(torch.ops.aten, name)}


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], device: torch.device | None = None) -> int:
    """Multiply-accumulates of one forward pass of a single image of ``input_size`` in eval mode
    (``torch.utils.flop_counter`` counts 2 FLOPs per MAC; the paper's "FLOPs" are MACs). Attention is
    counted by :data:`MAC_FORMULAS` whichever kernel runs, so the count does not depend on the torch."""
    was_training = model.training
    model.eval()
    x = example_input(model, input_size)
    x = x.to(device) if device is not None else x
    model(x)  # warm-up: adapter layers fuse their weights once per eval(); that is not per-image work
    counter = FlopCounterMode(display=False, custom_mapping=MAC_FORMULAS)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)
