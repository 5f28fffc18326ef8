"""Per-task files: only what a task learned, on top of a shared pretrained base.

A task file holds the trainable parameters (adapters, normalisation layers, biases, head), the
normalisation running statistics, and how to rebuild the adapted model (adapter kind and options,
classes). ``load_task`` rebuilds the task's model on a base model, sharing the base's frozen
weights in memory; ``switch_task`` swaps tasks in an already-adapted model without touching them.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.adapters.base import RESIDUAL
from spa.adapters.convert import NORM_TYPES, adapter_layers, freeze, head_names
from spa.adapters.registry import apply_adapter
from spa.saved.restore import restore
from spa.utils import atomic_torch_save

TASK_FORMAT = "spa.task/1"


def _task_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors that a task holds (see :func:`task_state`), by name, not copied."""
    tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for mod_name, module in model.named_modules():
        for kept in ("block_mask", *RESIDUAL):    # kept blocks; Pear's folded residuals
            if module._buffers.get(kept) is not None:
                tensors[f"{mod_name}.{kept}"] = module._buffers[kept]
        if isinstance(module, NORM_TYPES):
            for buf_name, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    tensors[f"{mod_name}.{buf_name}"] = buf
    return tensors


def task_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters (a tensor shared by several layers once, under its first name) plus
    normalisation buffers (running statistics), block masks (a block-pruned task's kept blocks) and
    Pear's folded residuals, detached on CPU."""
    return {name: tensor.detach().cpu() for name, tensor in _task_tensors(model).items()}


def save_task(model: nn.Module, path: str | Path, *, adapter: dict[str, Any], classes: list[str] | None = None,
              structure: dict[str, Any] | None = None, frozen: list[str] | None = None,
              base: dict[str, Any] | None = None) -> Path:
    """Write the task file. ``adapter`` = ``{"kind": ..., "options": {...}}`` as given to
    :func:`~spa.adapters.apply_adapter`; ``structure`` is the pruning structure (kept channels);
    ``frozen``: the modules the run froze on top (``backbone.frozen``), frozen again on loading;
    ``base``: what the task was trained on (``{"timm_name", "weights", "sha256"}``), which a
    :class:`~spa.adapters.bank.TaskBank` checks against its own base."""
    num_classes = getattr(model, "num_classes", None)
    payload = {"format": TASK_FORMAT, "adapter": {"kind": adapter["kind"], "options": dict(adapter.get("options", {}))},
               "classes": list(classes) if classes is not None else None, "num_classes": num_classes,
               "structure": structure, "state": task_state(model)}
    if frozen:
        payload["frozen"] = list(frozen)
    if base:
        payload["base"] = dict(base)
    atomic_torch_save(payload, path)
    return Path(path)


def read_task(path_or_payload: str | Path | dict) -> dict[str, Any]:
    payload = path_or_payload if isinstance(path_or_payload, dict) else \
        torch.load(path_or_payload, map_location="cpu", weights_only=True)
    if payload.get("format") != TASK_FORMAT:
        raise ValueError(f"{path_or_payload} is not a task file written by spa.adapters.save_task")
    return payload


def _shared_copy(base: nn.Module) -> nn.Module:
    """A structural copy of ``base`` whose frozen conv/linear weights are the base's own tensors.
    Normalisation layers, biases and the head are copied (a task overwrites them)."""
    heads = head_names(base)
    memo: dict[int, Any] = {}
    for name, module in base.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not any(name == h or name.startswith(h + ".") for h in heads):
            memo[id(module.weight)] = module.weight
    return copy.deepcopy(base, memo)


def load_task(base: nn.Module, path: str | Path | dict, device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the adapted model of a task on ``base`` (a plain timm model with the pretrained weights).

    The base is not modified, and its frozen weights are shared, not copied, by the returned model.
    """
    payload = read_task(path)
    model = _shared_copy(base)
    if payload["num_classes"] is not None and hasattr(model, "reset_classifier"):
        model.reset_classifier(payload["num_classes"])
    apply_adapter(model, payload["adapter"]["kind"], **payload["adapter"]["options"])
    freeze(model, payload.get("frozen") or [])     # e.g. the patch embedding: not in the task, the base's own
    restore(model, payload["structure"])      # a pruned task: remove the same channels, in the same order
    switch_task(model, payload)
    if device is not None:
        model.to(device)
    return model


def switch_task(model: nn.Module, path: str | Path | dict) -> nn.Module:
    """Load a task into an adapted model of the same structure, in place: only the task's tensors
    change, the shared base weights are not touched (and need not be reloaded)."""
    payload = read_task(path)
    state = payload["state"]
    expected = set(_task_tensors(model))           # names only: nothing is copied (the model may be on meta)
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"task file does not fit this model: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}; was it saved from the same adapter and backbone?")
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise ValueError(
                    f"task tensor {name} has shape {tuple(tensor.shape)}, the model {tuple(own[name].shape)}"
                )
            own[name].copy_(tensor)
    for layer in adapter_layers(model).values():
        layer._cache.clear()
    return model
