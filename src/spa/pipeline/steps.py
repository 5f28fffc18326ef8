"""What every method's stages share: the initial state (resume, start from the unpruned run, or
train), a steps.csv row, the checkpoint written after each step."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from spa.adapters.convert import head_only
from spa.metrics import count_parameters
from spa.pipeline.configs import setting
from spa.pipeline.parts import Parts
from spa.pruning.session import PruningSession, count_macs
from spa.pruning.widths import session_widths
from spa.records import CHECKPOINT, HISTORY, RunDir
from spa.training import apply_channels_last
from spa.utils import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)

def selection_of(result) -> dict[str, Any]:
    """What the records keep of a training call's model selection."""
    return {"selection": result.selection, "selected_epoch": result.selected_epoch}


def initial_state(parts: Parts, session: PruningSession | None, status: str, initial_run: str | None,
                  epochs: int, on_resume: Callable[[Parts, dict[str, Any]], None] | None = None):
    """Step 0: resume from this run's checkpoint, start from the unpruned run, or train ``epochs``.
    ``on_resume(parts, checkpoint)``: a method's own structure, rebuilt before the state is loaded.
    Returns (steps.csv rows so far, last completed step, model selection of the last training)."""
    if status == "resume":
        return resume(parts, session, on_resume)
    if initial_run is not None:
        rows, widths, selection = start_from(parts, session, initial_run)
    else:
        rows, widths, selection = train_initial(parts, session, epochs)
    parts.record_step(rows, widths)
    save_checkpoint(parts.rundir, parts.model, session, 0, selection)
    return rows, 0, selection


def resume(parts: Parts, session: PruningSession | None, on_resume: Callable[[Parts, dict[str, Any]], None] | None):
    """This run's checkpoint: its pruning history replayed, its state loaded, its later epochs dropped."""
    rundir, model, device = parts.rundir, parts.model, parts.device
    checkpoint = torch.load(rundir.file(CHECKPOINT), map_location=device, weights_only=True)
    if session is not None:
        session.replay(checkpoint["history"])
        if parts.channels_last:
            apply_channels_last(model, device)
    if on_resume is not None:
        on_resume(parts, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    done = int(checkpoint["step"])
    rundir.keep_epochs_until(done)
    log.info("resuming %s after step %d", rundir.path, done)
    return [r for r in rundir.read_steps() if r["step"] <= done], done, checkpoint["selection"]


def start_from(parts: Parts, session: PruningSession | None, initial_run: str):
    """The trained state of the run this one starts from (unpruned, or channel-pruned for Pear's
    ``pruning.after``), its epochs copied in; its last steps.csv row becomes this run's step 0."""
    model, device = parts.model, parts.device
    initial = RunDir(initial_run)
    if not initial.file(CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"the unpruned run {initial_run} has no {CHECKPOINT} to start pruning from (it was made by an older "
            f"version). Fix: rerun it (delete the folder), or pass schedule.reuse_unpruned=false to train here.")
    checkpoint = torch.load(initial.file(CHECKPOINT), map_location=device, weights_only=True)
    if checkpoint["history"] and session is not None:     # a channel-pruned start (Pear's pruning.after)
        session.replay(checkpoint["history"])
        if parts.channels_last:
            apply_channels_last(model, device)
    load_unpruned(model, checkpoint["state_dict"])
    for record in initial.read_epochs():
        parts.rundir.append_epoch(record)
    last = initial.read_steps()[-1]     # an unpruned run has one row
    widths = session_widths(session) if session is not None else None
    rows = [parts.with_health(
        {**last, "step": 0, "density": session.density if checkpoint["history"] else 1.0,
         "weight_density": last.get("weight_density", 1.0) if checkpoint["history"] else 1.0,
         "kept_filters": session.kept_filters if session is not None else None}, widths)]
    log.info("starting from the %s run %s (test top-1 %.2f%%)", "channel-pruned" if checkpoint["history"] else
             "unpruned", initial_run, rows[0]["top1"])
    return rows, widths, checkpoint["selection"]


def train_initial(parts: Parts, session: PruningSession | None, epochs: int):
    """The initial training (after the head alone where ``train.head_epochs`` asks for it)."""
    t0 = time.perf_counter()
    head_epochs = int(setting(parts.cfg, "train.head_epochs"))
    if head_epochs:       # the ViT runs of the paper's ICLR version: the new head alone first
        with head_only(parts.model):
            parts.train(head_epochs, "head", 0)
    result, final = parts.train(epochs, "train", 0)
    widths = session_widths(session) if session is not None else None
    rows = [parts.with_health(step_row(0, parts.model, session, None, final, parts.size, time.perf_counter() - t0),
                              widths)]
    return rows, widths, selection_of(result)


def load_unpruned(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unpruned run's state into ``model``; the block masks and scores that block pruning
    attached (which the unpruned run has not) keep their start values (all kept, zero)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".block_mask", ".block_scores"))]
    if missing or unexpected:
        raise RuntimeError(f"the unpruned run's state does not fit this model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")


def step_row(step: int, model, session, top1_before: float | None, final, size: tuple[int, int],
             seconds: float, base_deployable: float | None = None) -> dict[str, Any]:
    """One row of steps.csv. MACs (the paper's "FLOPs") at the run's input size and at 32 × 32.
    ``weight_density``: deployable (fused) parameters / those of the unpruned network
    (``base_deployable``), the ViT runs' "pruned weights" (1 at step 0; None where not counted)."""
    params = count_parameters(model)
    weight_density = round(params.deployable / base_deployable, 6) if base_deployable else \
        (1.0 if step == 0 else None)
    try:
        macs_32 = count_macs(model, (32, 32))
    except AssertionError as err:  # a ViT / Swin with a fixed input size: timm asserts the size; nothing else is hidden
        log.debug("no MACs at 32 x 32: %s", err)
        macs_32 = None
    return {"step": step, "density": round(session.density, 6) if session else 1.0,
            "weight_density": weight_density, "kept_filters": session.kept_filters if session else None,
            "top1_before": top1_before, "top1": final.test_top1, "top5": final.test_top5,
            "test_loss": final.test_loss, "val_top1": final.val_top1, "train_loss": final.train_loss,
            "train_top1": final.train_top1, "params_total": params.total, "params_learned": params.trainable,
            "params_deployable": params.deployable, "macs": count_macs(model, size), "macs_32": macs_32,
            "time_s": round(seconds, 2)}


def save_checkpoint(rundir: RunDir, model, session, step: int, selection: dict[str, Any],
                    pear: dict[str, Any] | None = None) -> None:
    """After a completed step (0: the initial training): the state dict and the pruning history
    (safe to torch.load), atomically. Pruned runs resume from it; unpruned ones are started from."""
    history = session.history if session is not None else []
    original = session.original_filters if session is not None else None
    atomic_torch_save({"step": step, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "history": history, "original_filters": original, "selection": selection,
                       **({"pear": pear} if pear is not None else {})},
                      rundir.file(CHECKPOINT))
    if session is not None:
        # the structure and the unit its density counts (files written before this key have channels / filters)
        atomic_write_json(rundir.file(HISTORY), {"structure": session.structure.name, "unit": session.structure.unit,
                                                 "original_filters": original, "steps": history})
