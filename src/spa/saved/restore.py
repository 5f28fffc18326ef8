"""A saved network back in memory: :func:`restore` gives a fresh, unpruned model the pruned shape
that a ``model.pt`` or ``task.pt`` records (channel history, block masks or Pear's sharing), and
:func:`load_backbone` builds a backbone from any weights, a pruned ``model.pt`` included. It sits
above models, adapters and pruning, so none of them needs to know the others' saved forms."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from spa.adapters.convert import adapter_layers
from spa.adapters.pear import apply_plan
from spa.models import WeightsInfo, create_backbone
from spa.pruning.blocks import attach_blocks
from spa.pruning.session import PruningSession, example_input


def restore(model: nn.Module, structure: dict[str, Any] | None) -> PruningSession | None:
    """Give a fresh, unpruned ``model`` the pruned shape that ``structure`` records (``{"history",
    "input_size", "original_filters"}``, as ``model.pt`` and ``task.pt`` store it; ``{"structure":
    "blocks", "block_shape"}``: block masks, whose values the task file holds; ``{"structure": "pear",
    "plan", "sharing", "checkpoint", "channels"}``: Pear's pruned and shared adapters): the one way a saved
    pruned network is rebuilt. Returns the session (None when there is nothing to restore)."""
    if not structure:
        return None
    if structure.get("structure") == "pear":       # Pear's sharing map, on its channel-pruned network if any
        session = restore(model, structure.get("channels"))
        apply_plan(model, structure["plan"], structure["sharing"], structure["checkpoint"], fresh=False)
        return session
    if structure.get("structure") == "blocks":      # a block-pruned task: masks on its matrices, not removed channels
        attach_blocks(model, structure["block_shape"], dense=not adapter_layers(model),
                      exclude=structure.get("exclude"), columns=structure.get("columns", ()))
        return None
    session = PruningSession(model, example_input(model, structure["input_size"]), structure["original_filters"])
    session.replay(structure["history"])
    return session


def load_backbone(timm_name: str, num_classes: int, **options: Any) -> tuple[nn.Module, WeightsInfo]:
    """:func:`spa.models.create_backbone` with ``options``, where ``weights`` may also be a pruned
    ``model.pt``: its recorded shape is rebuilt (:func:`restore`) before its weights are loaded."""
    return create_backbone(timm_name, num_classes, restore=restore, **options)
