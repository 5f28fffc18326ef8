"""Pruning without data or training: a network pruned step by step by the data-free weight
criterion, for parameter and MAC budgets, the speed benchmarks and the ViT budget tables."""
from __future__ import annotations

import torch

from spa.adapters import apply_adapter
from spa.adapters.convert import freeze
from spa.models import BackboneSpec, create_backbone
from spa.pruning.importance import CRITERIA
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, example_input


def weight_pruned(backbone: BackboneSpec, kind: str = "finetune", options: dict | None = None,
                  step_fraction: float = 0.1, target_density: float = 0.1, input_size: tuple[int, int] = (32, 32),
                  device: torch.device | None = None, round_to: int = 1, seed: int = 0, scope: str = "global",
                  frozen: tuple[str, ...] = ()):
    """Yield ``(step, session, model)`` for step 0 (unpruned) and after every step of a pruning
    schedule, with the network pruned as the data-free weight criterion (L1 of BN-folded filters)
    leaves it: the same groups and budgets a run takes, no training and no data. The model starts
    from random weights drawn with ``seed`` (so the same channels go every time) and is pruned in
    place (eval mode); ``round_to``, ``scope`` and ``frozen`` as ``pruning.round_to``,
    ``pruning.scope`` and ``backbone.frozen``. Raises ValueError where the adapter does not apply
    (SPPaRA on a transformer)."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model, _ = create_backbone(backbone.timm_name, backbone.num_classes, cifar_stem=backbone.cifar_stem,
                               kwargs=dict(backbone.kwargs))
    if kind != "finetune":
        model = apply_adapter(model, kind, **(options or {}))
    freeze(model, list(frozen))
    model.to(device).eval()
    session = PruningSession(model, example_input(model, input_size))
    plan = Plan(session.original_filters, step_fraction, target_density)
    yield 0, session, model
    for step in range(1, plan.steps + 1):
        session.step(step, plan, CRITERIA["weight"](), None, device, round_to=round_to, scope=scope)
        yield step, session, model
