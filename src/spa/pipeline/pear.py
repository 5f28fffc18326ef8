"""Pear (docs/method.md §7, spa.adapters.pear): from its warm-up run (or the channel-pruned run of
``pruning.after``, or this run's checkpoint), score the adapters, prune and share them, then train
the rest of ``train.epochs`` with a rebuilt optimiser; steps.csv row 1 and a checkpoint after it."""
from __future__ import annotations

import copy
import itertools
import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from spa import config_dir
from spa.adapters import pear as pear_lib
from spa.metrics import count_parameters
from spa.pipeline.configs import setting, training_epochs, unpruned_config
from spa.pipeline.method import Method
from spa.pipeline.parts import Parts
from spa.pipeline.steps import initial_state, save_checkpoint, selection_of, step_row
from spa.pruning.widths import session_widths
from spa.records import WARMUP
from spa.settings import SettingError, check_choice, checked
from spa.training import autocast_context, evaluate
from spa.utils import atomic_write_json, step_seed

log = logging.getLogger(__name__)

PEAR = "pear.json"    # Pear's record: positions, importances, pruned positions and their donors, knobs


def check_pear(cfg: DictConfig) -> None:
    """A Pear config (spa.adapters.pear): the adapter it prunes and shares, and its knobs."""
    pr = cfg.pruning
    if cfg.adapter.kind != "splora":
        raise SettingError(f"pruning={pr.name} prunes and shares low-rank (LoRA / SPLoRA) adapters, not "
                           f"adapter={cfg.adapter.name}; use adapter=pear_lora_r8 (or another LoRA / SPLoRA adapter)")
    for key, choices in (("importance", pear_lib.IMPORTANCES), ("mapping", pear_lib.MAPPINGS),
                         ("sharing", pear_lib.SHARINGS), ("checkpoint", pear_lib.CHECKPOINTS)):
        checked(f"pruning.{key}", check_choice, f"pruning.{key}", pr.get(key), choices)
    ratio = pr.get("ratio")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise SettingError(f"pruning.ratio={ratio}: the fraction of adapters pruned, a number in [0, 1), e.g. 0.5")
    for key in ("prune_at_epoch", "score_batches"):
        if not isinstance(pr.get(key), int) or isinstance(pr.get(key), bool) or pr.get(key) < 1:
            raise SettingError(f"pruning.{key}={pr.get(key)}: use an int >= 1")
    if pr.prune_at_epoch >= cfg.train.epochs:
        raise SettingError(f"pruning.prune_at_epoch={pr.prune_at_epoch} leaves no training after Pear's step "
                           f"(train.epochs={cfg.train.epochs}): use pruning.prune_at_epoch<{cfg.train.epochs}")
    weight = pr.get("blend_weight")
    if weight is not None and (not isinstance(weight, (int, float)) or not 0 <= weight <= 1):
        raise SettingError(f"pruning.blend_weight={weight}: null (importance-weighted) or a number in [0, 1]")
    if pr.checkpoint == "blend" and pr.sharing == "none":
        raise SettingError("pruning.checkpoint=blend initialises the donors, and pruning.sharing=none has none: "
                           "use pruning.checkpoint=fold or none, or pruning.sharing=tied")


def warmup_config(cfg: DictConfig) -> DictConfig:
    """Pear's warm-up: ``cfg`` unpruned for ``pruning.prune_at_epoch`` epochs (a run of its own)."""
    start = unpruned_config(cfg)
    epochs = int(cfg.pruning.prune_at_epoch)
    with open_dict(start):
        start.pruning = {"name": f"warmup_{epochs}ep", "structure": WARMUP}
        start.train.epochs = epochs
        start.train.epochs_by_adapter = {}
    return start


def channel_start_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``pruning`` = the channel-pruning group ``pruning.after`` (configs/pruning/<after>.yaml)."""
    group = config_dir() / "pruning" / f"{cfg.pruning.after}.yaml"
    channel = OmegaConf.load(group) if group.is_file() else None
    if channel is None or "criterion" not in channel:
        choices = sorted(p.stem for p in group.parent.glob("*.yaml") if "criterion" in OmegaConf.load(p))
        raise SettingError(f"pruning.after={cfg.pruning.after}: Pear goes on from a channel-pruned run; use one of the "
                           f"channel prunings {choices} (or pruning.after=null)")
    start = copy.deepcopy(cfg)
    with open_dict(start):
        start.pruning = channel
        start.report = False
    return start


def start_config(cfg: DictConfig) -> DictConfig | None:
    """A Pear run starts from its warm-up run (shared by every ratio and variant), or, with
    ``pruning.after``, from the channel-pruned run it goes on from (which starts from its own
    unpruned run)."""
    if setting(cfg, "pruning.after"):
        return channel_start_config(cfg)
    return warmup_config(cfg) if setting(cfg, "schedule.reuse_unpruned") else None


def initial_epochs(cfg: DictConfig) -> int:
    """The warm-up's epochs, ``pruning.prune_at_epoch`` (after a channel-pruned run: the learner's own)."""
    return training_epochs(cfg) if setting(cfg, "pruning.after") else int(cfg.pruning.prune_at_epoch)


def resume(parts: Parts, checkpoint: dict[str, Any]) -> None:
    """After Pear's step, a checkpoint holds its plan: the ties and residuals are rebuilt first."""
    if checkpoint.get("pear") is not None:
        restore_pear(parts.model, checkpoint["pear"])
        parts.pear = checkpoint["pear"]


def pear_step(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pear (spa.adapters.pear): from the warm-up run (or the channel-pruned run of ``pruning.after``, or
    this run's checkpoint), score the adapters, prune and share them, then train the rest of
    ``train.epochs`` with a rebuilt optimiser; steps.csv row 1 and a checkpoint after it."""
    cfg, model, pr = parts.cfg, parts.model, parts.cfg.pruning
    rows, done_step, selection = initial_state(parts, parts.session, status, initial_run, initial_epochs(cfg),
                                               on_resume=resume)
    rows[0].setdefault("params_stored", rows[0]["params_learned"])
    if done_step >= 1:
        return rows, selection
    t0 = time.perf_counter()
    parts.seed_step(1)
    batches = itertools.islice(iter(parts.train_loader), int(pr.score_batches))
    amp = bool(cfg.train.amp)
    scores = pear_lib.importance(model, pr.importance, batches, parts.device, seed=step_seed(int(cfg.seed), 1),
                                 autocast=lambda: autocast_context(parts.device, amp))
    plan = pear_lib.make_plan(model, scores, float(pr.ratio), pr.mapping)
    pear_lib.apply_plan(model, plan, pr.sharing, pr.checkpoint, setting(cfg, "pruning.blend_weight"))
    parts.pear = pear_record(cfg, model, plan)
    log.info("Pear: %d of %d adapters pruned (%s importance), %d given a donor (sharing %s), checkpoint %s; %d "
             "unique adapters learned", len(plan["pruned"]), len(plan["positions"]), pr.importance,
             len(parts.pear["shared"]), pr.sharing, pr.checkpoint, parts.pear["unique_adapters"])
    before = evaluate(model, parts.test_loader, parts.device, amp, parts.channels_last)
    result, final = parts.train(int(cfg.train.epochs) - int(pr.prune_at_epoch), "pear", 1)
    row = step_row(1, model, parts.session, before["top1"], final, parts.size, time.perf_counter() - t0)
    widths = session_widths(parts.session) if parts.session is not None else None
    rows.append(parts.with_health({**row, "params_stored": row["params_learned"] + pear_lib.residual_parameters(model)},
                                  widths))
    selection = selection_of(result)
    parts.record_step(rows, widths)
    save_checkpoint(parts.rundir, model, parts.session, 1, selection, pear=parts.pear)
    atomic_write_json(parts.rundir.file(PEAR), parts.pear)
    return rows, selection


def pear_record(cfg: DictConfig, model: torch.nn.Module, plan: dict[str, Any]) -> dict[str, Any]:
    """What pear.json, the checkpoint and task.pt keep of Pear's step: the plan and the knobs."""
    pr = cfg.pruning
    unique = {id(layer.A) for layer in pear_lib.positions(model).values() if layer.A.requires_grad}
    return {"structure": "adapters", "unit": "adapters", "plan": plan, "importance": pr.importance,
            "score_batches": int(pr.score_batches), "prune_at_epoch": int(pr.prune_at_epoch), "sharing": pr.sharing,
            "checkpoint": pr.checkpoint, "blend_weight": setting(cfg, "pruning.blend_weight"),
            "after": setting(cfg, "pruning.after"),
            "unique_adapters": len(unique), "no_donor": [n for n, d in plan["donors"].items() if d is None],
            # the donors a pruned position received (none with sharing=none: the plan's mapping is not used)
            "shared": {n: d for n, d in plan["donors"].items() if d is not None and pr.sharing != "none"},
            "residual_parameters": pear_lib.residual_parameters(model)}


def restore_pear(model: torch.nn.Module, record: dict[str, Any]) -> None:
    """Rebuild Pear's structure (ties, residual buffers) on a model whose values are then loaded."""
    pear_lib.apply_plan(model, record["plan"], record["sharing"], record["checkpoint"], fresh=False)


def task_structure(parts: Parts, channels: dict[str, Any] | None) -> dict[str, Any]:
    """The sharing map and the checkpoint's layout (the values are in the task's state), on the
    channel structure of ``pruning.after`` if any."""
    return {"structure": "pear", "plan": parts.pear["plan"], "sharing": parts.pear["sharing"],
            "checkpoint": parts.pear["checkpoint"], "channels": channels}


def summary_params(parts: Parts) -> dict[str, Any]:
    """What a task stores: the learned parameters and the residual buffers of the blend checkpoint."""
    return {"stored": count_parameters(parts.model).trainable + pear_lib.residual_parameters(parts.model)}


METHOD = Method("pear", pear_step, check=check_pear, start_config=start_config, initial_epochs=initial_epochs,
                channel_session=lambda cfg: bool(setting(cfg, "pruning.after")), task_structure=task_structure,
                summary_params=summary_params)
