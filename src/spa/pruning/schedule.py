"""The iterative schedule (docs/method.md §2): remove a fixed fraction of the original filters per step,
ranking channels globally, never emptying a group.

density = kept producer filters / original producer filters. A channel of a group with k
producers (e.g. a residual stream written by k convs) removes k filters at once; the selection
takes the lowest-scored channels first and skips any that would overshoot the step's budget, so
each step removes exactly its budget whenever single-producer channels are left to fill it.

``round_to`` > 1 (``pruning.round_to``) then moves each touched channel group's kept width to the
nearest multiple of ``round_to`` (at least ``round_to``), removing its lowest-scored channels: widths
that suit the hardware's vector units and tensor cores. A step then removes about, not exactly, its
budget; the schedule counts what is left, so the next step corrects the difference.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spa.pruning.groups import ChannelGroup


@dataclass(frozen=True)
class Plan:
    original_filters: int
    step_fraction: float
    target_density: float

    def __post_init__(self) -> None:
        if not (0 < self.step_fraction < 1 and 0 < self.target_density < 1):
            raise ValueError("schedule.step_fraction and schedule.target_density must be in (0, 1)")

    @property
    def steps(self) -> int:
        """Number of steps from density 1 to the target (paper: 5 % steps to 5 % = 19 steps)."""
        return max(0, round((1.0 - self.target_density) / self.step_fraction))

    def density_after(self, step: int) -> float:
        """Kept fraction of the original filters after ``step`` steps (step 0 = unpruned)."""
        return max(self.target_density, 1.0 - step * self.step_fraction)

    def kept_after(self, step: int) -> int:
        """Filters kept after ``step`` steps (step 0 = unpruned)."""
        return int(round(self.density_after(step) * self.original_filters))

    def budget(self, step: int, kept_now: int) -> int:
        """Filters to remove at ``step`` (1-based) given the current count."""
        return max(0, kept_now - self.kept_after(step))


def schedule_plan(original_filters: int, step_fraction: float, target_density: float,
                  density: str = "filters") -> Plan:
    """The filter plan a pruned run follows: down to ``target_density`` of the filters, or, where the
    target counts weights (``schedule.density=weights``), on down to ``step_fraction``, the run
    stopping at the first step at or below the target in weights."""
    return Plan(original_filters, step_fraction, step_fraction if density == "weights" else target_density)


def lowest_scored(group: ChannelGroup, scores: dict[str, torch.Tensor], count: int) -> list[int]:
    """The ``count`` lowest-scored units of ``group`` (ties by index), in index order."""
    order = sorted(range(group.size), key=lambda c: (float(scores[group.root][c]), c))
    return sorted(order[:count])


def check_round_to(round_to: object) -> None:
    """``pruning.round_to`` must be a positive int (1 = no rounding)."""
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ValueError(f"pruning.round_to={round_to!r}: use a positive int (1 = no rounding, 8 suits GPUs)")


def select_channels(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], budget: int,
                    min_channels: int = 1, round_to: int = 1,
                    keep_at_least: dict[str, int] | None = None) -> dict[str, list[int]]:
    """Lowest-scored channels across all groups whose filters add up to ``budget``.

    Ties break by group order and channel index (deterministic). A group keeps ``min_channels``, and
    at least ``keep_at_least[root]`` where given (the guard: a group at its floor gives no more, and
    the step's remaining budget goes to the next-lowest scores elsewhere). ``round_to`` > 1 rounds the
    kept width of every group the step touches (module docstring). Returns ``{group root: [channel
    indices]}`` (current indices).
    """
    floors = keep_at_least or {}
    check_round_to(round_to)
    candidates, costs = [], [g.costs() for g in groups]
    for gi, g in enumerate(groups):
        s = scores[g.root]
        if s.numel() != g.size:
            raise ValueError(f"group {g.root}: {s.numel()} scores for {g.size} channels")
        for c in range(g.size):
            candidates.append((float(s[c]), gi, c))
    candidates.sort()
    removed: dict[str, list[int]] = {}
    left = {g.root: g.size for g in groups}
    total = 0
    for _, gi, c in candidates:
        if total >= budget:
            break
        g = groups[gi]
        cost = costs[gi][c]
        if total + cost > budget or left[g.root] - 1 < max(min_channels, floors.get(g.root, 0)):
            continue
        removed.setdefault(g.root, []).append(c)
        left[g.root] -= 1
        total += cost
    if round_to > 1:
        removed = _rounded(groups, scores, removed, round_to)
    return {root: sorted(idxs) for root, idxs in removed.items()}


SCOPES = ("global", "local")


def select_local(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], density: float,
                 original_sizes: dict[str, int], min_channels: int = 1) -> dict[str, list[int]]:
    """``pruning.scope=local`` (Torch-Pruning's non-global pruning, the paper's ViT runs): every group
    keeps ``density`` of its original width (halves round up; at least ``min_channels``), losing its
    own lowest-scored units (ties by index). Groups of different sizes then shrink alike instead of
    competing through per-layer normalised scores, which rank a unit of a wide layer (an MLP channel,
    1 / 3,072 of its layer) below one of a narrow one (a head, 1 / 12)."""
    removed: dict[str, list[int]] = {}
    for g in groups:
        if g.whole:           # kept whole (spa.pruning.groups: grouped convs, stored-size splits, partial concats)
            continue
        keep = max(min_channels, math.floor(density * original_sizes[g.root] + 0.5))
        if g.size > keep:
            removed[g.root] = lowest_scored(g, scores, g.size - keep)
    return removed


def _rounded(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], removed: dict[str, list[int]],
             round_to: int) -> dict[str, list[int]]:
    """``removed`` with each touched channel group's kept width at the nearest multiple of
    ``round_to`` (halves round up; never below ``round_to`` nor above the group's width)."""
    out: dict[str, list[int]] = {}
    for g in groups:
        idxs = removed.get(g.root, [])
        if not idxs or g.kind != "channels":     # attention heads are counted in heads, not rounded
            if idxs:
                out[g.root] = idxs
            continue
        kept = g.size - len(idxs)
        target = min(g.size, max(round_to, math.floor(kept / round_to + 0.5) * round_to))
        if g.size - target > 0:
            out[g.root] = lowest_scored(g, scores, g.size - target)
    return out


def removed_filters(groups: list[ChannelGroup], selection: dict[str, list[int]]) -> int:
    costs = {g.root: g.costs() for g in groups}
    return sum(costs[root][int(c)] for root, idxs in selection.items() for c in idxs)


class _Cuts:
    """The state of :func:`select_latency`: each group's channels in score order, how many are cut,
    and the widths of the layers after the cuts so far."""

    def __init__(self, groups, scores, widths, layers, cost, floors, round_to):
        self.groups, self.scores, self.layers, self.cost, self.floors = groups, scores, layers, cost, floors
        self.round_to, self.widths = round_to, {name: list(w) for name, w in widths.items()}
        self.order = {g.root: sorted(range(g.size), key=lambda c: (float(scores[g.root][c]), c)) for g in groups}
        self.taken = {g.root: 0 for g in groups}

    def size(self, g: ChannelGroup) -> int:
        """Channels the group's next cut removes (down to the next multiple of ``round_to``); 0: none left."""
        kept = g.size - self.taken[g.root]
        target = kept - 1 if self.round_to == 1 else (kept - 1) // self.round_to * self.round_to
        return kept - target if target >= max(1, self.round_to, self.floors.get(g.root, 0)) else 0

    def saved(self, g: ChannelGroup, n: int) -> float:
        total = 0.0
        for name, dim in self.layers.get(g.root, ()):
            if name in self.widths:
                kin, kout = self.widths[name]
                total += self.cost(name, kin, kout) - self.cost(name, *((kin - n, kout) if dim == "in" else
                                                                        (kin, kout - n)))
        return total

    def key(self, g: ChannelGroup) -> float | None:
        """Summed score of the next cut over the seconds it saves; None: no cut, or one saving nothing."""
        n = self.size(g)
        gain = self.saved(g, n) if n else 0.0
        if gain <= 0:
            return None
        chosen = self.order[g.root][self.taken[g.root]:self.taken[g.root] + n]
        return sum(float(self.scores[g.root][c]) for c in chosen) / gain

    def cut(self, g: ChannelGroup) -> float:
        """Make the group's next cut; the seconds it saves."""
        n = self.size(g)
        gain = self.saved(g, n)
        for name, dim in self.layers.get(g.root, ()):
            if name in self.widths:
                self.widths[name][0 if dim == "in" else 1] -= n
        self.taken[g.root] += n
        return gain


def select_latency(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], widths: dict[str, tuple[int, int]],
                   layers: dict[str, set[tuple[str, str]]], cost: Callable[[str, int, int], float], saving: float,
                   floors: dict[str, int] | None = None, round_to: int = 1) -> dict[str, list[int]]:
    """The step of a latency target (``schedule.target=latency``, docs/method.md §9): greedily remove
    the channels of lowest importance per second of predicted latency saved until the removals save
    ``saving`` seconds.

    A group's next cut is its lowest-scored channel, or with ``round_to`` > 1 its lowest-scored
    channels down to the next multiple of ``round_to`` (never below it): its key is their summed score
    over the seconds they save, ``cost(layer, in, out)`` summed over the (layer, "in" | "out") widths
    they shrink (``layers[group root]``) at today's ``widths``. The smallest key goes first; keys of
    groups sharing a layer with one just cut are recomputed when they come up (lazy greedy). A cut that
    would save more than is left is skipped (the next may fit), as :func:`select_channels` skips a
    channel that would overshoot its budget; a step nothing fits makes its smallest cut. A group keeps
    ``floors[root]`` channels (the guard) and one at least; a cut the table says saves nothing is never
    made. Returns ``{group root: [channel indices]}`` (current indices)."""
    check_round_to(round_to)
    cuts = _Cuts(groups, scores, widths, layers, cost, floors or {}, round_to)
    heap = [(k, gi) for gi, g in enumerate(groups) if not g.whole and (k := cuts.key(g)) is not None]
    heapq.heapify(heap)
    left, too_big = saving, []
    while left > 0 and heap:
        _, gi = heapq.heappop(heap)
        now = cuts.key(groups[gi])
        if now is None:
            continue
        if heap and now > heap[0][0] * (1 + 1e-9) + 1e-30:     # stale: a neighbour's cut moved it
            heapq.heappush(heap, (now, gi))
            continue
        if cuts.saved(groups[gi], cuts.size(groups[gi])) > left:      # would overshoot: the next one may fit
            too_big.append(gi)
            continue
        left -= cuts.cut(groups[gi])
        if (k := cuts.key(groups[gi])) is not None:
            heapq.heappush(heap, (k, gi))
    if left > 0 and too_big and not any(cuts.taken.values()):     # nothing fits: the smallest cut, so a step moves
        cuts.cut(groups[min(too_big, key=lambda gi: cuts.saved(groups[gi], cuts.size(groups[gi])))])
    return {g.root: sorted(cuts.order[g.root][:cuts.taken[g.root]]) for g in groups if cuts.taken[g.root]}
