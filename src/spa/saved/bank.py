"""A task bank: one base network loaded once, any number of task files registered by name, and
``predict(task, x)`` for whichever task is asked.

Tasks of the same shape (adapter kind and options, pruning structure, classes, frozen modules)
share one adapted model: asking for another task of that shape copies its tensors in
(:func:`~spa.saved.tasks.switch_task`), which costs what the task file holds, not what the base
holds. A task of a new shape gets its model from :func:`~spa.saved.tasks.load_task` once; an
unpruned task's model shares the base's frozen weights (a pruned one keeps its own smaller copies).
A task trained on another base (another architecture, or weights with another SHA-256) is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.saved.tasks import load_task, read_task, switch_task


class TaskBank:
    """``TaskBank(base, identity={"timm_name": ..., "sha256": ...})``; ``register(name, task.pt)``;
    ``predict(name, x)``. ``identity`` describes ``base`` (what a run's ``summary.json`` records of its
    starting weights); a task file that names another architecture or another SHA-256 is refused."""

    def __init__(self, base: nn.Module, identity: dict[str, Any] | None = None,
                 device: torch.device | str | None = None) -> None:
        self.base = base.eval()
        self.identity = dict(identity or {})
        self.device = device
        self._tasks: dict[str, dict[str, Any]] = {}
        self._models: dict[str, nn.Module] = {}      # shape key -> adapted model
        self._current: dict[str, str] = {}           # shape key -> task whose tensors it holds

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def register(self, name: str, task: str | Path | dict[str, Any]) -> None:
        """Add the task file (or payload) ``task`` as ``name``, after checking it was trained on this base."""
        payload = read_task(task)
        theirs = payload.get("base") or {}
        for key in ("timm_name", "sha256"):
            if self.identity.get(key) and theirs.get(key) and self.identity[key] != theirs[key]:
                raise ValueError(
                    f"task {name!r} ({task if not isinstance(task, dict) else 'payload'}) was trained on base "
                    f"{theirs.get('timm_name')} (weights {theirs.get('weights')}, SHA-256 {theirs.get('sha256')}), "
                    f"this bank's base is {self.identity.get('timm_name')} (weights {self.identity.get('weights')}, "
                    f"SHA-256 {self.identity.get('sha256')}): its {key} differs. Load it on its own base.")
        if name in self._tasks:
            raise ValueError(f"task {name!r} is registered already; use another name")
        self._tasks[name] = payload

    @staticmethod
    def _shape(payload: dict[str, Any]) -> str:
        return json.dumps([payload["adapter"], payload.get("structure"), payload.get("num_classes"),
                           payload.get("frozen")], sort_keys=True, default=str)

    def model(self, name: str) -> nn.Module:
        """The adapted model holding task ``name`` (built once per shape, switched in place after)."""
        if name not in self._tasks:
            raise KeyError(f"no task {name!r} in the bank; registered: {self.tasks}")
        payload = self._tasks[name]
        key = self._shape(payload)
        if key not in self._models:
            self._models[key] = load_task(self.base, payload, self.device).eval()
        elif self._current[key] != name:
            switch_task(self._models[key], payload)
        self._current[key] = name
        return self._models[key]

    def predict(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Logits of task ``name`` on the batch ``x`` (no gradients), on the bank's device: ``x`` is moved
        there first (a bank on ``cuda`` takes a CPU batch)."""
        model = self.model(name)
        device = next(model.parameters()).device
        with torch.no_grad():
            return model(x.to(device))
