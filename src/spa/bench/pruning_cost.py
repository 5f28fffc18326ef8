"""Pruning cost: scoring with each criterion against training, and the pruning step itself."""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from spa.bench.nets import SEED, NetSpec, dense_model, with_layout
from spa.pruning.importance import CRITERIA, group_scores
from spa.pruning.lrp import input_bounds
from spa.pruning.schedule import Plan, select_channels
from spa.pruning.session import PruningSession
from spa.training.engine import autocast_context
from spa.utils import timed


def scoring_criterion(name: str) -> Any:
    if name == "lrp":
        return CRITERIA[name](*input_bounds((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    return CRITERIA[name]()


def pruning_overhead(spec: NetSpec, batch: int, device: torch.device, batches: int = 3, warmup: int = 1,
                     criteria=("weight", "gradient", "taylor", "lrp"), amp: bool = False,
                     channels_last: bool = False) -> list[dict[str, Any]]:
    """Per criterion: seconds of scoring ``batches`` batches (the weight criterion is data-free: one
    call), next to a training step on as many batches; the data-driven criteria score every batch
    of an epoch (``schedule.score_batches: null``, the paper), so their ratio is that of a scoring
    pass to a training epoch. Then the pruning step itself: selecting and removing a 10 % budget
    (dependency-graph surgery), without scoring."""
    torch.manual_seed(SEED)
    model = with_layout(dense_model(spec, device), channels_last)
    gen = torch.Generator().manual_seed(SEED)
    data = [(torch.randn(batch, 3, spec.size, spec.size, generator=gen).to(device),
             torch.randint(0, spec.num_classes, (batch,), generator=gen).to(device)) for _ in range(batches)]
    session = PruningSession(model, torch.zeros(1, 3, spec.size, spec.size, device=device))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train():
        model.train()
        for x, y in data:
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, amp):
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
    train_s = timed({"train": train}, device, 1, warmup)["train"]
    rows = []
    for name in criteria:
        criterion = scoring_criterion(name)
        try:
            s = timed({name: lambda: criterion.score(model, session.groups, data, device)},  # noqa: B023 (called here)
                      device, 1, warmup)[name]
        except (NotImplementedError, ValueError, TypeError) as err:
            rows.append({"network": spec.label, "criterion": name, "batch": batch, "batches": batches,
                         "seconds": None, "train_seconds": train_s, "ratio_to_training": None, "note": str(err)[:80]})
            continue
        rows.append({"network": spec.label, "criterion": name, "batch": batch,
                     "batches": 0 if not criterion.needs_data else batches, "seconds": s, "train_seconds": train_s,
                     "ratio_to_training": s / train_s, "note": ""})
    scores = CRITERIA["weight"]().score(model, session.groups)
    start = time.perf_counter()
    ranked = group_scores(session.groups, scores, "l1")
    budget = Plan(session.original_filters, 0.1, 0.1).budget(1, session.kept_filters)
    session.apply(1, select_channels(session.groups, ranked, budget))
    step_s = time.perf_counter() - start
    rows.append({"network": spec.label, "criterion": "pruning step (select + remove 10 %)", "batch": batch,
                 "batches": 0, "seconds": step_s, "train_seconds": train_s, "ratio_to_training": step_s / train_s,
                 "note": "after scoring"})
    return rows
