"""Pruning to a latency (``schedule.target=latency``, docs/method.md §9): a step's selection by
importance per predicted latency saved, the width multiple a runtime prefers, and the lowest latency
the guard lets a network reach."""
from __future__ import annotations

import copy
import functools
import logging

import torch
import torch.nn as nn

from spa.pruning.latency import CPU, RUN_PRECISION, NetworkLatency, check_runtime, deployable, network_runner
from spa.pruning.schedule import select_latency
from spa.pruning.session import PruningSession, example_input
from spa.utils import timed_ratio

log = logging.getLogger(__name__)
EXTRA_STEPS = 5       # steps a latency target may take beyond its plan, where the measured latency lags
LANDING = 0.05        # a step that reaches the target lands within [1 - LANDING, 1] x it, measured, where it can
TRIALS = 3            # cuts such a step measures at most to land there


def preferred_round_to(runtime: str, device: torch.device = CPU) -> int:
    """The width multiple the runtime's kernels run best at: blocked CPU layouts (onnxruntime's NCHWc,
    oneDNN's) take 16 channels a block with AVX-512 and 8 with AVX2; tensor cores want multiples of 8."""
    if device.type == "cuda":
        return 8
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if "AVX512" in capability else 8 if "AVX2" in capability else 4


def latency_selector(net: NetworkLatency, session, step: int, step_fraction: float, measured_now: float,
                     target: float, round_to: int):
    """The selection of latency step ``step`` (for ``PruningSession.step(select=...)``): down to
    max(target, min(1 - step · step_fraction, measured now - step_fraction)) of the dense latency,
    measured; turned into a predicted saving by the table's own ratio now (predicted / measured), so a
    prediction off by a constant factor still steps right. Its cut is measured before it is made, and
    the step that aims at the target, or would overshoot it, lands by measuring (:func:`_land`)."""
    goal = max(target, min(1.0 - step * step_fraction, measured_now - step_fraction))
    predicted_now = net.predict(session.model)
    saving = net.table_seconds(predicted_now - predicted_now * goal / measured_now)
    log.info("latency step %d: %.3f of dense measured, %.3f predicted; aiming at %.3f measured", step,
             measured_now, predicted_now, goal)
    select = functools.partial(_select, widths=net.widths(session.model), layers=session.group_layers(),
                               cost=net.layer, round_to=round_to)
    return functools.partial(_land, select=select, measure=functools.partial(measure_cut, session, net),
                             saving=saving, measured_now=measured_now, target=target, last=goal <= target)


def _select(groups, scores, floors, *, widths, layers, cost, saving, round_to):
    return select_latency(groups, scores, widths, layers, cost, saving, floors, round_to)


def _land(groups, scores, floors, *, select, measure, saving: float, measured_now: float, target: float,
          last: bool = True):
    """A step's cut, measured on a copy before it is made. A step before the last (``last`` False) takes
    its cut unless it measures below the window [1 - LANDING, 1] × target (it would overshoot the
    target). The last step, and one that would overshoot, lands: a cut measured inside the window is
    taken; else the saving is rescaled by the secant through (0, measured now) and the cut's measured
    latency, aiming at the window's middle, up to ``TRIALS`` cuts. Without a cut in the window: the
    highest measured at or below the target (the smallest cut among equals), else the lowest."""
    tried: list[tuple[float, dict]] = []
    for trial in range(1, TRIALS + 1):
        cut = select(groups, scores, floors, saving=saving)
        if any(cut == c for _, c in tried):
            break
        measured = measure(cut)
        tried.append((measured, cut))
        log.info("cut %d of the step: %d channels measure %.3f of dense (target %.3f)", trial,
                 _size(cut), measured if measured is not None else float("nan"), target)
        if measured is None or target * (1 - LANDING) <= measured <= target or (not last and measured > target):
            return cut
        if measured >= measured_now:        # it saves nothing measurable: no secant to follow
            break
        saving *= (measured_now - target * (1 - LANDING / 2)) / (measured_now - measured)
    below = [t for t in tried if t[0] <= target]        # the fewest channels among equals
    best = max(below, key=lambda t: (t[0], -_size(t[1]))) if below else min(tried, key=lambda t: (t[0], _size(t[1])))
    return best[1]


def _size(cut: dict[str, list[int]]) -> int:
    return sum(map(len, cut.values()))


def measure_cut(session: PruningSession, net: NetworkLatency, cut: dict[str, list[int]]) -> float | None:
    """Measured latency (fraction of dense) of ``session``'s model with ``cut`` removed, on a copy;
    None where the copy's channel groups do not match the session's (the cut is then taken unmeasured)."""
    model = copy.deepcopy(session.model)
    trial = PruningSession(model, example_input(model, tuple(net.x.shape[-2:])))
    sizes = {g.root: g.size for g in trial.groups}
    if any(sizes.get(g.root) != g.size for g in session.groups if g.root in cut):
        log.warning("a copy of the model traces other channel groups: this step's cut is made unmeasured")
        return None
    trial.apply(0, cut)
    return net.measure(model)[1]


def floor_latency(model: nn.Module, size: tuple[int, int], runtime: str, batch: int,
                  max_group_pruning: float | None, ignore: list[str], round_to: int) -> float:
    """The lowest latency the guard allows ``model`` (unpruned; its weights do not matter), as a fraction
    of its dense latency on ``runtime``, measured: a copy with every channel group cut to its floor
    (``max_group_pruning``, ``ignore``, the groups kept whole, one channel, ``round_to``)."""
    check_runtime(runtime)
    model = deployable(model)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    dense = network_runner(runtime, copy.deepcopy(model), x)
    session = PruningSession(model, example_input(model, size))
    floors = session.floors(max_group_pruning, ignore)
    cut = {}
    for g in session.groups:
        keep = max(1, round_to, floors.get(g.root, 0))
        if not g.whole and g.size > keep:
            cut[g.root] = list(range(g.size - keep))
    session.apply(1, cut)
    return timed_ratio(network_runner(runtime, model, x), dense, CPU, RUN_PRECISION).ratio
