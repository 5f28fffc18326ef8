"""Latency-targeted pruning against density-targeted pruning at the same measured latency
(``make bench`` section ``latency_target``): a network pruned step by step (data-free weight
criterion, no training: only widths matter to latency) by importance per predicted latency saved
until its measured latency reaches each target, and by plain filter density (today's schedule,
widths unrounded and rounded alike) until it measures at or below the same latency."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from spa.bench.nets import NetSpec, dense_model
from spa.pruning.importance import CRITERIA
from spa.pruning.latency import RUN_PRECISION, NetworkLatency
from spa.pruning.latency_target import EXTRA_STEPS, latency_selector, preferred_round_to
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, count_macs, example_input
from spa.utils import Precision

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
STEP = 0.1           # of the dense latency (latency target) or of the filters (density target) per step


def _state(session: PruningSession, net: NetworkLatency, size: tuple[int, int], dense_macs: int, step: int,
           measured: float, ms: float) -> dict[str, Any]:
    return {"step": step, "measured": measured, "measured_ms": ms, "interval": net.last.interval if net.last else None,
            "predicted": net.predict(session.model),
            "density": session.density, "macs_ratio": count_macs(session.model, size) / dense_macs}


def latency_path(dense, net: NetworkLatency, size, dense_macs: int, target: float, round_to: int) -> list[dict]:
    """Every step of latency-targeted pruning of a copy of ``dense`` to ``target`` (as a run does: it
    stops at the first step measured at or below it)."""
    model = copy.deepcopy(dense)
    session = PruningSession(model, example_input(model, size))
    ms, measured = net.measure(model)
    path = [_state(session, net, size, dense_macs, 0, measured, ms)]
    for step in range(1, round((1 - target) / STEP) + EXTRA_STEPS + 1):
        select = latency_selector(net, session, step, STEP, measured, target, round_to)
        if session.step(step, None, CRITERIA["weight"](), None, CPU, select=select).removed_filters == 0:
            break
        ms, measured = net.measure(model)
        path.append(_state(session, net, size, dense_macs, step, measured, ms))
        if measured <= target:
            break
    return path


def density_path(dense, net: NetworkLatency, size, dense_macs: int, lowest: float, round_to: int) -> list[dict]:
    """Every step of plain density-targeted pruning (``STEP`` of the filters a step, the weight
    criterion, kept widths rounded to ``round_to``) until the copy measures at or below ``lowest``."""
    model = copy.deepcopy(dense)
    session = PruningSession(model, example_input(model, size))
    plan = Plan(session.original_filters, STEP, 0.05)
    ms, measured = net.measure(model)
    path = [_state(session, net, size, dense_macs, 0, measured, ms)]
    for step in range(1, plan.steps + 1):
        session.step(step, plan, CRITERIA["weight"](), None, CPU, round_to=round_to)
        ms, measured = net.measure(model)
        path.append(_state(session, net, size, dense_macs, step, measured, ms))
        if measured <= lowest:
            break
    return path


def first_at(path: list[dict], latency: float) -> dict | None:
    """The first state of ``path`` measured at or below ``latency``."""
    return next((s for s in path if s["measured"] <= latency), None)


def target_rows(spec: NetSpec, runtime: str, batch: int, targets: tuple[float, ...],
                precision: Precision = RUN_PRECISION, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """Per target: the latency-targeted network's first step at or below it, and each density-targeted
    path's first step at or below that network's measured latency (unrounded, and rounded to the
    runtime's preferred multiple as the latency target is)."""
    size = (spec.size, spec.size)
    dense = dense_model(spec, CPU).eval()
    net = NetworkLatency(dense, size, runtime, batch, cache_dir, precision)
    dense_macs = count_macs(dense, size)
    multiple = preferred_round_to(runtime)
    reached = []
    for target in targets:          # a path of its own per target: its last step aims at the target itself
        path = latency_path(dense, net, size, dense_macs, target, multiple)
        reached.append({**path[-1], "not_reached": path[-1]["measured"] > target})
    floor = min(s["measured"] for s in reached)
    density_paths = {1: density_path(dense, net, size, dense_macs, floor, 1),
                     multiple: density_path(dense, net, size, dense_macs, floor, multiple)}
    rows = []
    for target, state in zip(targets, reached):
        base = {"network": spec.label, "runtime": runtime, "batch": batch, "target": target,
                "dense_ms": 1e3 * net.dense_s}
        rows.append({**base, "schedule": "latency", "round_to": multiple, **state})
        for r, path in density_paths.items():
            hit = first_at(path, state["measured"])
            rows.append({**base, "schedule": "density", "round_to": r,
                         **(hit or {**path[-1], "not_reached": True})})
    return rows
