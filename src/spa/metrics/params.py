"""Parameter counts. The paper's per-task learned-parameter accounting lands with the adapters."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class ParamCounts:
    total: int       # every parameter of the model
    trainable: int   # parameters with requires_grad (what the optimiser updates)


def count_parameters(model: nn.Module) -> ParamCounts:
    params = list(model.parameters())
    return ParamCounts(total=sum(p.numel() for p in params),
                       trainable=sum(p.numel() for p in params if p.requires_grad))
