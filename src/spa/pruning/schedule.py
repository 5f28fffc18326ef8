"""The iterative schedule (spa.md §2): remove a fixed fraction of the original filters per step,
ranking channels globally, never emptying a group.

density = kept producer filters / original producer filters. A channel of a group with k
producers (e.g. a residual stream written by k convs) removes k filters at once; the selection
takes the lowest-scored channels first and skips any that would overshoot the step's budget, so
each step removes exactly its budget whenever single-producer channels are left to fill it.
"""
from __future__ import annotations

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

    def kept_after(self, step: int) -> int:
        """Filters kept after ``step`` steps (step 0 = unpruned)."""
        density = max(self.target_density, 1.0 - step * self.step_fraction)
        return int(round(density * self.original_filters))

    def budget(self, step: int, kept_now: int) -> int:
        """Filters to remove at ``step`` (1-based) given the current count."""
        return max(0, kept_now - self.kept_after(step))


def select_channels(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], budget: int,
                    min_channels: int = 1) -> dict[str, list[int]]:
    """Lowest-scored channels across all groups whose filters add up to ``budget``.

    Ties break by group order and channel index (deterministic). A group keeps ``min_channels``.
    Returns ``{group root: [channel indices]}`` (current indices).
    """
    candidates = []
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
        cost = g.filters_per_channel
        if total + cost > budget or left[g.root] - 1 < min_channels:
            continue
        removed.setdefault(g.root, []).append(c)
        left[g.root] -= 1
        total += cost
    return {root: sorted(idxs) for root, idxs in removed.items()}


def removed_filters(groups: list[ChannelGroup], selection: dict[str, list[int]]) -> int:
    by_root = {g.root: g for g in groups}
    return sum(len(idxs) * by_root[root].filters_per_channel for root, idxs in selection.items())
