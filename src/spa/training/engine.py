"""One epoch of training, evaluation, and ``fit`` (epochs with per-epoch records and selection)."""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from spa.metrics.accuracy import topk_hits
from spa.training.schedulers import Schedule

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    """One line of ``epochs.jsonl``. Accuracies in percent, times in seconds."""
    phase: str
    step: int           # pruning step this epoch belongs to (0: the initial training)
    epoch: int
    epochs: int
    lr: float
    train_loss: float
    train_top1: float
    test_loss: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    time_s: float = 0.0


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    selected_epoch: int = 0           # the epoch whose weights the model holds at the end
    selection: str = "last"


def autocast_context(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


_NCHW_HOOK = "_spa_nchw_hook"
ONEDNN_IC_BLOCK = 16


def _onednn_unsafe(module: nn.Module) -> bool:
    """A 1×1 strided conv with fewer input channels than oneDNN's channel block: its channels-last
    weight gradient on CPU is computed out of bounds (crashes, or silently wrong gradients; oneDNN
    issue #6035, reproduced here with torch 2.15 at 8-13 input channels and 64 × 64 inputs). Pruning
    makes such layers (a ResNet's downsample convs)."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 4
        and tuple(getattr(module, "kernel_size", ())) == (1, 1)
        and tuple(getattr(module, "stride", (1, 1))) != (1, 1)
        and int(module.in_channels) < ONEDNN_IC_BLOCK
    )


def apply_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """Channels-last memory format for ``model``; on CPU, layers that oneDNN gets wrong in that
    format (:func:`_onednn_unsafe`) keep the default layout for their weight and their input. Call
    again after the model's layers change (pruning)."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        handle = module.__dict__.pop(_NCHW_HOOK, None)
        if handle is not None:
            handle.remove()
        if device.type == "cpu" and _onednn_unsafe(module):
            # clone, not .contiguous(): a 1×1 kernel in channels-last strides already counts as contiguous
            module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)
            module.__dict__[_NCHW_HOOK] = module.register_forward_pre_hook(
                lambda mod, args: (args[0].contiguous(), *args[1:])
            )
    return model


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    schedule: Schedule | None = None,
    amp: bool = False,
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    desc: str = "train",
    on_step: Callable[[], None] | None = None,
    clip_grad_norm: float | None = None,
) -> tuple[float, float]:
    """Train for one pass over ``loader``; returns (mean loss, top-1 %) over the seen samples.
    ``on_step`` is called after every optimiser step (block pruning updates its masks there).
    ``clip_grad_norm``: the gradients' total L2 norm is clipped to it before every step (the ViT
    runs of the paper's ICLR version clip at 1.0); None = no clipping.

    Sums stay on the device (one host sync per epoch); a non-finite loss stops training.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
        if max_steps is not None and step >= max_steps:
            break
        x, y = _to_device(x, y, device, channels_last)
        with autocast_context(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        _optimizer_step(loss, optimizer, scaler, clip_grad_norm)
        if schedule is not None:
            schedule.step_batch()
        if on_step is not None:
            on_step()
        loss_sum += loss.detach().float() * y.numel()
        correct += topk_hits(logits.detach(), y, (1,))[0]
        seen += y.numel()
    mean_loss = loss_sum.item() / max(1, seen)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss became {mean_loss} during '{desc}'; lower optim.lr")
    return mean_loss, 100.0 * correct.item() / max(1, seen)


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    clip_grad_norm: float | None) -> None:
    """Backward and one optimiser step, through the gradient scaler where it is on, with the
    gradients' total L2 norm clipped to ``clip_grad_norm`` (after unscaling) where given."""
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaled else loss).backward()
    if clip_grad_norm is not None:
        if scaled:
            scaler.unscale_(optimizer)       # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (%) of ``model`` in eval mode over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros(2, device=device, dtype=torch.long)
    seen = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None):
        x, y = _to_device(x, y, device, channels_last)
        with autocast_context(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        hits += topk_hits(logits, y, (1, 5))
        seen += y.numel()
    if seen == 0:
        raise ValueError("evaluation loader is empty")
    top1, top5 = hits.tolist()
    return {"loss": loss_sum.item() / seen, "top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen}


def check_compile(setting: object) -> None:
    """``train.compile`` must be false, true or a backend name."""
    if setting is not None and not isinstance(setting, (bool, str)):
        raise ValueError(
            f"train.compile={setting!r}: use false, true or a torch.compile backend name (e.g. train.compile=aot_eager)"
        )


def compiled(model: nn.Module, setting: bool | str) -> nn.Module | None:
    """``train.compile``: false (None: eager), true (``torch.compile`` with inductor) or a backend
    name. A fresh compile per training call: after a pruning step the shapes differ, and the
    previous call's graphs would only fill dynamo's cache."""
    check_compile(setting)
    if setting is False or setting is None:
        return None
    torch._dynamo.reset()
    return torch.compile(model) if setting is True else torch.compile(model, backend=setting)


def _evaluate_into(record: EpochRecord, model: nn.Module, val_loader: Iterable | None, test_loader: Iterable | None,
                   device: torch.device, amp: bool, channels_last: bool) -> None:
    """Fill ``record``'s validation and test metrics (where there is such a split)."""
    if val_loader is not None:
        v = evaluate(model, val_loader, device, amp, channels_last, desc="val")
        record.val_loss, record.val_top1, record.val_top5 = v["loss"], v["top1"], v["top5"]
    if test_loader is not None:
        t = evaluate(model, test_loader, device, amp, channels_last, desc="test")
        record.test_loss, record.test_top1, record.test_top5 = t["loss"], t["top1"], t["top5"]


def _log_epoch(record: EpochRecord) -> None:
    """The one informative line of an epoch."""
    log.info("%s epoch %d/%d | loss %.4f top1 %.2f%%%s%s | lr %.3g | %.1fs", record.phase, record.epoch, record.epochs,
             record.train_loss, record.train_top1,
             "" if record.val_top1 is None else f" | val top1 {record.val_top1:.2f}%",
             "" if record.test_top1 is None else f" | test top1 {record.test_top1:.2f}% top5 {record.test_top5:.2f}%",
             record.lr, record.time_s)


def fit(model: nn.Module, train_loader: Iterable, optimizer: torch.optim.Optimizer, schedule: Schedule, epochs: int,
        device: torch.device, *, test_loader: Iterable | None = None, val_loader: Iterable | None = None,
        amp: bool = False, channels_last: bool = False, eval_every: int = 1, select: str = "last",
        phase: str = "train", step: int = 0, max_steps: int | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None, train_forward: nn.Module | None = None,
        on_step: Callable[[], None] | None = None, clip_grad_norm: float | None = None) -> FitResult:
    """Train ``epochs`` epochs, evaluating every ``eval_every`` epochs and after the last.

    ``select="best_val"`` restores the weights of the epoch with the best validation top-1 at the
    end (needs ``val_loader``); ``"last"`` keeps the final weights. The test set never selects.
    ``train_forward``: a compiled ``model`` (:func:`compiled`) for the training steps; evaluation
    runs ``model`` itself. ``clip_grad_norm``: see :func:`train_one_epoch`.
    """
    if select not in ("last", "best_val"):
        raise ValueError(f"train.select={select!r} is unknown; use last or best_val")
    if select == "best_val" and val_loader is None:
        raise ValueError("train.select=best_val needs a validation split: set dataset.val_fraction > 0")
    use_scaler = amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    result = FitResult(selection=select)
    best_val, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss, acc = train_one_epoch(model if train_forward is None else train_forward, train_loader, optimizer, device,
                                    schedule, amp, channels_last, scaler, max_steps, desc=f"{phase} {epoch}/{epochs}",
                                    on_step=on_step, clip_grad_norm=clip_grad_norm)
        schedule.step_epoch()
        record = EpochRecord(phase, step, epoch, epochs, lr, loss, acc)
        if epoch % eval_every == 0 or epoch == epochs:
            _evaluate_into(record, model, val_loader, test_loader, device, amp, channels_last)
            if select == "best_val" and record.val_top1 > best_val:
                best_val, result.selected_epoch = record.val_top1, epoch
                best_state = copy.deepcopy(model.state_dict())
        record.time_s = time.perf_counter() - start
        result.history.append(record)
        _log_epoch(record)
        if on_epoch is not None:
            on_epoch(record)
    if select == "last":
        result.selected_epoch = epochs
    elif best_state is not None:
        model.load_state_dict(best_state)
        log.info("restored the weights of epoch %d (best validation top-1 %.2f%%)", result.selected_epoch, best_val)
    return result
