"""Channel pruning, the paper's method (docs/method.md §2): train (or resume, or start from the
shared unpruned run), then score, prune and recover step by step. Also the runs that prune nothing
(``pruning=none``): their initial training is the whole run."""
from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from spa.pipeline import latency
from spa.pipeline.configs import setting, training_epochs, unpruned_config
from spa.pipeline.latency import RunLatency
from spa.pipeline.method import Method
from spa.pipeline.parts import Parts
from spa.pipeline.steps import initial_state, save_checkpoint, selection_of, step_row
from spa.pruning import check_pruning
from spa.pruning.importance import CRITERIA
from spa.pruning.latency_target import EXTRA_STEPS, latency_selector
from spa.pruning.lrp import input_bounds
from spa.pruning.schedule import SCOPES, Plan, check_round_to, schedule_plan
from spa.pruning.session import PruningSession
from spa.pruning.widths import session_widths
from spa.records import is_unpruned
from spa.settings import SettingError, check_choice, checked
from spa.training import apply_channels_last, evaluate
from spa.utils import step_seed

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """A channel-pruning config: the criterion, rounding and scope, the adapter, the schedule."""
    if is_unpruned(cfg.pruning):
        return
    round_to, scope = setting(cfg, "pruning.round_to"), setting(cfg, "pruning.scope")
    checked("pruning", check_pruning, setting(cfg, "pruning.criterion") or cfg.pruning.name)
    checked("pruning.round_to", check_round_to, round_to)
    checked("pruning.scope", check_choice, "pruning.scope", scope, SCOPES)
    if scope == "local" and round_to != 1:
        raise SettingError("pruning.scope=local keeps the same fraction of every layer and rounds no width: use "
                           "pruning.round_to=1, or pruning.scope=global to round widths")
    if not setting(cfg, "adapter.prunable"):
        fix = (f"to prune with this adapter use adapter={cfg.adapter.name.replace('lora', 'splora')}"
               if "lora" in cfg.adapter.name else "prune it by blocks: pruning=block_movement or block_magnitude")
        raise SettingError(f"adapter={cfg.adapter.name} cannot be channel-pruned (prunable: false); {fix}")
    checked("schedule", Plan, 1, cfg.schedule.step_fraction, cfg.schedule.target_density)
    latency.check(cfg)


def start_config(cfg: DictConfig) -> DictConfig | None:
    """A pruned run starts from the unpruned run of the same (dataset, learner, seed), trained once
    and shared by every criterion (unless ``schedule.reuse_unpruned=false``)."""
    if not is_unpruned(cfg.pruning) and setting(cfg, "schedule.reuse_unpruned"):
        return unpruned_config(cfg)
    return None


def iterative(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train (or resume, or start from the shared unpruned run), then score, prune and recover step
    by step. Returns the steps.csv rows and the last model selection."""
    cfg, session = parts.cfg, parts.session
    guard = setting(cfg, "pruning.max_group_pruning"), list(setting(cfg, "pruning.ignore") or [])
    timing = RunLatency.of(cfg, parts, session)           # on the unpruned model, before any resume
    if session is not None and setting(cfg, "schedule.density") == "filters" and \
            setting(cfg, "schedule.target") == "density":                 # before any training
        checked("pruning.max_group_pruning", session.check_reachable, float(cfg.schedule.target_density), *guard)
    rows, done_step, selection = initial_state(parts, session, status, initial_run, training_epochs(cfg))
    if timing is not None and rows[0].get("latency_measured") is None:
        rows[0].update(timing.columns(parts.model))
        parts.rundir.write_steps(rows)
    if session is not None:
        selection = prune_steps(parts, session, rows, done_step, timing) or selection
    return rows, selection

def prune_steps(parts: Parts, session: PruningSession, rows: list[dict[str, Any]], done_step: int,
                timing: RunLatency | None = None) -> dict | None:
    """Pruning steps after ``done_step``: score, remove, test, recover, record, checkpoint. A latency
    target (``timing.target``) stops at the first step measured at or below it, at most
    :data:`~spa.pruning.latency_target.EXTRA_STEPS` beyond its plan, or where the guard leaves nothing to cut."""
    cfg, model = parts.cfg, parts.model
    sched, t, seed = cfg.schedule, cfg.train, int(cfg.seed)
    by_weights = setting(cfg, "schedule.density") == "weights"
    by_latency = timing is not None and timing.target is not None
    plan = schedule_plan(session.original_filters, sched.step_fraction, sched.target_density,
                         setting(cfg, "schedule.density"))
    last = round((1.0 - timing.target) / sched.step_fraction) + EXTRA_STEPS if by_latency else plan.steps
    round_to = timing.round_to if by_latency else setting(cfg, "pruning.round_to")
    base = rows[0]["params_deployable"] / (rows[0].get("weight_density") or 1.0)
    selection = None
    for step in range(done_step + 1, last + 1):
        if by_weights and (rows[-1].get("weight_density") or 1.0) <= sched.target_density:
            break
        if by_latency and timing.done(rows):
            break
        t0 = time.perf_counter()
        parts.seed_step(step)
        criterion = make_criterion(cfg.pruning.criterion, step_seed(seed, step), parts.mean_std)
        select = latency_selector(timing.net, session, step, float(sched.step_fraction),
                                  float(rows[-1]["latency_measured"]), timing.target, round_to) if by_latency else None
        result = session.step(step, None if by_latency else plan, criterion, parts.train_loader, parts.device,
                              sched.score_batches, cfg.pruning.group_reduction, round_to,
                              setting(cfg, "pruning.scope"), setting(cfg, "pruning.normalization"),
                              setting(cfg, "pruning.max_group_pruning"), list(setting(cfg, "pruning.ignore") or []),
                              select=select)
        if by_latency and result.removed_filters == 0:
            log.warning("latency step %d: the guard leaves nothing to remove that saves predicted latency; the run "
                        "stops at %.3f of the dense latency measured (target %.3f)", step,
                        float(rows[-1]["latency_measured"]), timing.target)
            break
        if parts.channels_last:     # pruned layers get new (contiguous) weights
            apply_channels_last(model, parts.device)
        before = evaluate(model, parts.test_loader, parts.device, bool(t.amp), parts.channels_last)
        result, final = parts.train(int(sched.recovery_epochs), "recover", step,
                                    lr_scale=float(setting(cfg, "schedule.recovery_lr_scale")))
        widths = session_widths(session)
        row = step_row(step, model, session, before["top1"], final, parts.size, time.perf_counter() - t0,
                       base_deployable=base)
        rows.append(parts.with_health({**row, **(timing.columns(model) if timing is not None else {})}, widths))
        selection = selection_of(result)
        parts.record_step(rows, widths)
        save_checkpoint(parts.rundir, model, session, step, selection)
    return selection


def make_criterion(name: str, seed: int, mean_std: tuple[tuple[float, ...], tuple[float, ...]]):
    """The criterion object of a step: ``random`` is seeded per step, ``lrp`` gets the input bounds
    of the data's normalisation ``(mean, std)`` (for z^β at the first conv)."""
    check_pruning(name)
    if name == "random":
        return CRITERIA[name](seed=seed)
    if name == "lrp":
        return CRITERIA[name](*input_bounds(*mean_std))
    return CRITERIA[name]()


METHOD = Method("iterative", iterative, check=check, start_config=start_config,
                channel_session=lambda cfg: not is_unpruned(cfg.pruning),
                ignored=lambda cfg: list(setting(cfg, "pruning.ignore") or []))
