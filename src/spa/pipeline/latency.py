"""Latency in a pruned run (docs/method.md §9): with ``schedule.runtime`` set, every steps.csv row
gains the network's predicted and measured latency on that runtime (ms and fraction of the dense
network's); with ``schedule.target=latency`` each step removes the channels of lowest importance
per predicted latency saved, and the run stops at the first step whose measured latency is at or
below ``schedule.target_latency``."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from spa.models import create_backbone
from spa.pipeline.configs import setting
from spa.pipeline.parts import Parts
from spa.pruning.latency import NetworkLatency, check_runtime
from spa.pruning.latency_target import floor_latency, preferred_round_to
from spa.pruning.session import PruningSession
from spa.records import CHECKPOINT, RunDir
from spa.settings import SettingError, checked

log = logging.getLogger(__name__)

def check(cfg: DictConfig) -> None:
    """``schedule.target``, ``schedule.runtime``: a latency target needs an installed runtime, the
    global scope and filter density (its stop is the measured latency). Before anything is built."""
    target, runtime = setting(cfg, "schedule.target"), setting(cfg, "schedule.runtime")
    if target == "latency":
        if runtime is None:
            raise SettingError("schedule.target=latency measures the network on a runtime: set schedule.runtime="
                               "onnxruntime (its ONNX export, CPU) or schedule.runtime=torch (eager PyTorch)")
        if setting(cfg, "pruning.scope") != "global":
            raise SettingError("schedule.target=latency ranks channels across layers by importance per latency "
                               "saved: use pruning.scope=global")
        if setting(cfg, "schedule.density") != "filters":
            raise SettingError("schedule.target=latency stops at the measured latency, not at a weight density: "
                               "drop schedule.density=weights")
    if runtime is not None:
        checked("schedule.runtime", check_runtime, runtime)
    rundir = RunDir(cfg.paths.run_dir)
    if target == "latency" and not rundir.finished and not rundir.file(CHECKPOINT).is_file():
        check_reachable(cfg)


def round_to(cfg: DictConfig) -> int:
    """The width multiple a run's steps round to: ``pruning.round_to``; with a latency target, 1 (the
    default) means the runtime's preferred multiple (:func:`~spa.pruning.latency_target.preferred_round_to`)."""
    value = int(setting(cfg, "pruning.round_to"))
    if setting(cfg, "schedule.target") == "latency" and value == 1:
        return preferred_round_to(str(setting(cfg, "schedule.runtime")))
    return value


def check_reachable(cfg: DictConfig) -> None:
    """The guard lets the run reach its latency target: the backbone (random weights: latency depends on
    widths only) cut to every group's floor measures at or below it on the runtime; else SettingError
    naming the lowest latency the guard allows. Before anything is trained or written."""
    b = cfg.backbone
    model, _ = create_backbone(b.timm_name, 10, cifar_stem=bool(b.cifar_stem), kwargs=dict(b.kwargs or {}))
    size = (int(cfg.dataset.image_size), int(cfg.dataset.image_size))
    guard = setting(cfg, "pruning.max_group_pruning"), list(setting(cfg, "pruning.ignore") or [])
    runtime, target, multiple = str(setting(cfg, "schedule.runtime")), float(setting(cfg, "schedule.target_latency")), \
        round_to(cfg)
    lowest = floor_latency(model, size, runtime, int(setting(cfg, "schedule.latency_batch")), *guard, multiple)
    log.info("the guard lets %s go down to %.3f of its dense latency on %s (measured)", b.timm_name, lowest, runtime)
    if lowest > target:
        raise SettingError(
            f"pruning.max_group_pruning={guard[0]}, pruning.ignore={guard[1]} and widths in multiples of {multiple} "
            f"(pruning.round_to) let {b.timm_name} at {size[0]} px go down to {lowest:.3f} of its dense latency on "
            f"{runtime} (measured), above schedule.target_latency={target}: raise the target to "
            f"{math.ceil(lowest * 105) / 100:.2f} or more, or loosen the guard (or a smaller pruning.round_to)")


class RunLatency:
    """The latency records and target of one pruned run, built on its unpruned model (before any
    resume replays its pruning)."""

    def __init__(self, cfg: DictConfig, parts: Parts, session: PruningSession):
        self.runtime = str(setting(cfg, "schedule.runtime"))
        self.round_to = round_to(cfg)
        if self.round_to != int(setting(cfg, "pruning.round_to")):
            log.info("schedule.target=latency: kept widths rounded to multiples of %d, what this CPU's %s kernels "
                     "prefer (pruning.round_to=N to choose another)", self.round_to, self.runtime)
        self.target = float(setting(cfg, "schedule.target_latency")) \
            if setting(cfg, "schedule.target") == "latency" else None
        self.net = NetworkLatency(parts.model, parts.size, self.runtime, int(setting(cfg, "schedule.latency_batch")),
                                  Path(cfg.paths.results_dir) / "latency")
        log.info("latency on %s (batch %d): dense %.2f ms measured, table of %d layer shapes", self.runtime,
                 self.net.batch, 1e3 * self.net.dense_s, len(self.net.table.grids))

    @classmethod
    def of(cls, cfg: DictConfig, parts: Parts, session: PruningSession | None) -> RunLatency | None:
        if session is None or setting(cfg, "schedule.runtime") is None:
            return None
        if setting(cfg, "schedule.target") == "latency":
            checked("schedule.target", session.group_layers)      # CNN channels only
        return cls(cfg, parts, session)

    def columns(self, model) -> dict[str, Any]:
        """steps.csv's latency columns for ``model`` as it is now."""
        ms, fraction = self.net.measure(model)
        predicted = self.net.predict(model)
        return {"latency_runtime": self.runtime, "latency_pred": round(predicted, 4),
                "latency_pred_ms": round(1e3 * predicted * self.net.dense_s, 4),     # the dense one's ms measured
                "latency_measured": round(fraction, 4), "latency_measured_ms": round(ms, 4)}

    def done(self, rows: list[dict[str, Any]]) -> bool:
        """The last step's measured latency is at or below the target."""
        measured = rows[-1].get("latency_measured")
        return measured is not None and float(measured) <= self.target


