"""Block pruning (docs/method.md §6, spa.pruning.blocks): from the unpruned run (or this run's
checkpoint), one training stage per target density, the masks following the cubic schedule within
each stage; a steps.csv row and a checkpoint after every stage."""
from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from spa.pipeline.channels import start_config
from spa.pipeline.configs import setting, training_epochs
from spa.pipeline.method import Method
from spa.pipeline.parts import Parts
from spa.pipeline.steps import initial_state, save_checkpoint, selection_of, step_row
from spa.pruning.blocks import BLOCK_METHODS, BlockPruner, attach_blocks, empty_lines, pruned_parameters
from spa.pruning.widths import block_widths
from spa.records import HISTORY
from spa.settings import SettingError, check_choice, checked
from spa.training import apply_channels_last
from spa.utils import atomic_write_json

log = logging.getLogger(__name__)

BLOCK_ADAPTERS = ("finetune", "splopa")


def check_block_pruning(cfg: DictConfig) -> None:
    """A block-pruning config: its method, the adapter it masks, the stages and the block."""
    pr = cfg.pruning
    checked("pruning.method", check_choice, "pruning.method", pr.method, BLOCK_METHODS)
    if cfg.adapter.kind not in BLOCK_ADAPTERS:
        raise SettingError(f"pruning={pr.name} masks the blocks of SPLoPA's or fine-tuning's matrices, not "
                           f"adapter={cfg.adapter.name}; use adapter=splopa_r64, splopa_r128 or finetune (or a channel "
                           f"pruning: pruning=taylor)")
    key = "thresholds" if pr.method == "soft_movement" else "densities"
    targets = pr.get(key)
    if not targets or not all(isinstance(v, (int, float)) and 0 < v < 1 for v in targets):
        raise SettingError(f"pruning.{key}={targets}: use a list of numbers in (0, 1), e.g. pruning.{key}=[0.5,0.3]")
    ordered = sorted(targets, reverse=key == "densities")
    if list(targets) != ordered or len(set(targets)) != len(targets):
        raise SettingError(f"pruning.{key}={list(targets)}: each stage goes further, so the list must be strictly "
                           f"{'decreasing' if key == 'densities' else 'increasing'}, e.g. {ordered}")
    if pr.get("epochs_per_stage") is None:
        raise SettingError(f"pruning={pr.name} sets no pruning.epochs_per_stage: use an int >= 1, "
                           f"e.g. pruning.epochs_per_stage=2")
    warm = [setting(cfg, "pruning.initial_warmup"), setting(cfg, "pruning.final_warmup")]  # each in [0, 1)
    if sum(warm) >= 1:
        raise SettingError(f"pruning.initial_warmup={warm[0]}, final_warmup={warm[1]}: fractions of a stage "
                           f"that sum to less than 1, e.g. 0.1 and 0.2")
    shape = block_shape(cfg)
    if min(shape) < 1:
        raise SettingError(f"pruning.block_shape={list(shape)}: use two ints >= 1, e.g. [32,32]")
    if cfg.adapter.kind == "splopa" and tuple(cfg.adapter.options.block_shape) != shape:
        raise SettingError(f"pruning.block_shape={list(shape)} but SPLoPA's prototypes are "
                           f"{list(cfg.adapter.options.block_shape)} blocks: block pruning masks the prototypes' "
                           f"blocks; use pruning.block_shape=null")
    columns = setting(cfg, "pruning.columns") or []
    if not all(isinstance(c, str) and c for c in columns):
        raise SettingError(f"pruning.columns={columns}: use a list of layer-name endings, e.g. [conv_pwl] "
                           f"(MobileNetV2, EfficientNet) or [mlp.fc2] (ViT / DeiT)")
    if setting(cfg, "train.compile"):
        raise SettingError("train.compile with block pruning: its gradient hooks need eager mode; use "
                           "train.compile=false")


def block_shape(cfg: DictConfig) -> tuple[int, int]:
    """``pruning.block_shape``; null: the SPLoPA adapter's blocks (32 × 32 for fine-pruning)."""
    shape = setting(cfg, "pruning.block_shape") or setting(cfg, "adapter.options.block_shape") or (32, 32)
    return int(shape[0]), int(shape[1])


def block_pruning(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Block pruning (spa.pruning.blocks): from the unpruned run (or this run's checkpoint), one
    training stage per target of ``pruning.densities`` (τ of ``pruning.thresholds`` for soft
    movement), the masks following the cubic schedule within each stage; a steps.csv row and a
    checkpoint after every stage."""
    cfg, model, pr = parts.cfg, parts.model, parts.cfg.pruning
    attach_blocks(model, block_shape(cfg), dense=cfg.adapter.kind == "finetune",
                  exclude=setting(cfg, "adapter.options.exclude"), columns=list(setting(cfg, "pruning.columns")))
    if parts.channels_last:
        apply_channels_last(model, parts.device)
    pruner = BlockPruner(model, pr.method, score_lr=setting(cfg, "pruning.score_lr"), l1=setting(cfg, "pruning.l1"))
    rows, done_step, selection = initial_state(parts, None, status, initial_run, training_epochs(cfg))
    if status != "resume":
        rows[0].pop("kept_filters", None)             # a block run counts blocks, not filters
        rows[0].update(density=1.0, kept_units=pruner.kept_blocks, params_nonzero=rows[0]["params_deployable"])
        widths = block_widths(pruner.layers)
        rows[0] = parts.with_health(rows[0], widths)
        parts.record_step(rows, widths)
    targets = list(pr.thresholds if pr.method == "soft_movement" else pr.densities)
    epochs = int(pr.epochs_per_stage)
    stages = pruner.stages(targets, epochs * parts.batches(), setting(cfg, "pruning.initial_warmup"),
                           setting(cfg, "pruning.final_warmup"))
    for step in range(done_step + 1, len(stages) + 1):
        t0 = time.perf_counter()
        parts.seed_step(step)
        pruner.begin(stages[step - 1])
        result, final = parts.train(epochs, "prune", step, on_step=pruner.on_step)
        row = step_row(step, model, None, None, final, parts.size, time.perf_counter() - t0)
        row.pop("kept_filters")
        # learned: without the pruned blocks' terms; nonzero: the deployed weights a sparse format stores
        pruned = pruned_parameters(model)
        widths = block_widths(pruner.layers)
        rows.append(parts.with_health({**row, "density": round(pruner.density, 6), "kept_units": pruner.kept_blocks,
                                       "params_learned": row["params_learned"] - pruned["learned"],
                                       "params_nonzero": row["params_deployable"] - pruned["weights"]}, widths))
        log.info("block pruning stage %d (%s): density %.3f (%d / %d blocks), test top-1 %.2f%%", step, pr.method,
                 pruner.density, pruner.kept_blocks, pruner.original_blocks, final.test_top1)
        selection = selection_of(result)
        parts.record_step(rows, widths)
        save_checkpoint(parts.rundir, model, None, step, selection)
        atomic_write_json(parts.rundir.file(HISTORY), {
            "structure": "blocks", "unit": "blocks", "method": pr.method, "block_shape": list(block_shape(cfg)),
            "columns": list(setting(cfg, "pruning.columns")),
            "original_blocks": pruner.original_blocks, "layers": len(pruner.layers),
            "steps": [{"step": r["step"], "density": r["density"], "kept_blocks": r["kept_units"]} for r in rows],
            **empty_lines(model)})
    return rows, selection


def task_structure(parts: Parts, channels: dict[str, Any] | None) -> dict[str, Any]:
    """A block-pruned task: the masks live on its matrices (their values in task.pt), not in removed channels."""
    cfg = parts.cfg
    return {"structure": "blocks", "block_shape": list(block_shape(cfg)),
            "columns": list(setting(cfg, "pruning.columns")), "exclude": setting(cfg, "adapter.options.exclude")}


METHOD = Method("blocks", block_pruning, check=check_block_pruning, start_config=start_config,
                task_structure=task_structure)
