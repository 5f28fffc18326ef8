"""Pruning to a latency (``schedule.target=latency``, docs/method.md §9): a step's selection by
importance per predicted latency saved, the width multiple a runtime prefers, and the lowest latency
the guard lets a network reach."""
from __future__ import annotations

import copy
import functools
import logging

import torch
import torch.nn as nn

from spa.pruning.latency import CPU, NetworkLatency, check_runtime, deployable, network_runner
from spa.pruning.schedule import select_latency
from spa.pruning.session import PruningSession, example_input
from spa.utils import timed

log = logging.getLogger(__name__)
EXTRA_STEPS = 5       # steps a latency target may take beyond its plan, where the measured latency lags


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
    prediction off by a constant factor still steps right."""
    goal = max(target, min(1.0 - step * step_fraction, measured_now - step_fraction))
    predicted_now = net.predict(session.model)
    saving = net.table_seconds(predicted_now - predicted_now * goal / measured_now)
    log.info("latency step %d: %.3f of dense measured, %.3f predicted; aiming at %.3f measured", step,
             measured_now, predicted_now, goal)
    return functools.partial(_select, widths=net.widths(session.model), layers=session.group_layers(),
                             cost=net.layer, saving=saving, round_to=round_to)


def _select(groups, scores, floors, *, widths, layers, cost, saving, round_to):
    return select_latency(groups, scores, widths, layers, cost, saving, floors, round_to)


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
    seconds = timed({"dense": dense, "floor": network_runner(runtime, model, x)}, CPU, 20, 3)
    return seconds["floor"] / seconds["dense"]
