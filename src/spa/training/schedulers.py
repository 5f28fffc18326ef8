"""Learning-rate schedules by name. ``step`` is the paper's: StepLR(step_size=max(1, epochs // 4),
gamma=0.2), restarted on every training call, stepped once per epoch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

SCHEDULERS = ("step", "cosine", "onecycle", "constant")


@dataclass
class Schedule:
    scheduler: LRScheduler | None
    per_step: bool                  # step after every batch (True) or every epoch (False)

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def step_epoch(self) -> None:
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                    gamma: float = 0.2) -> Schedule:
    if name == "step":
        return Schedule(StepLR(optimizer, step_size=max(1, epochs // 4), gamma=gamma), per_step=False)
    if name == "cosine":
        return Schedule(CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch)), per_step=True)
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return Schedule(OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, epochs * steps_per_epoch)),
                        per_step=True)
    if name == "constant":
        return Schedule(None, per_step=False)
    raise ValueError(f"train.scheduler={name!r} is unknown; use one of {list(SCHEDULERS)}")
