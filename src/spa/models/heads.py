"""The classifier head of a timm model: its module names and state-dict keys."""
from __future__ import annotations

import torch.nn as nn


def head_names(model: nn.Module) -> list[str]:
    """Module names of the classifier head (timm's ``pretrained_cfg['classifier']``)."""
    head = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    return list(head) if isinstance(head, (list, tuple)) else [head]


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier head (timm's ``pretrained_cfg['classifier']``)."""
    heads = head_names(model)
    return [k for k in model.state_dict() if any(k == f"{h}.weight" or k == f"{h}.bias" for h in heads)]
