"""Parameter counts, as the paper counts them (docs/method.md §1).

- learned: what one task learns and stores: adapter terms over kept channels (SPLoRA
  ``r·(in + out)``, SPPaRA ``out·in``), biases, normalisation γ and β, and the full head; for
  fine-tuning every parameter. With physical channel removal the kept channels are exact.
- total: every parameter of the (adapted) model.
- deployable: parameters of the fused model (``spa.adapters.fuse``): adapters folded into the weights.

Every count is by tensor identity: a tensor that several layers share (a tied adapter, a prototype
bank) is counted once, as it is stored once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class ParamCounts:
    total: int        # every parameter of the model
    trainable: int    # parameters with requires_grad = the task's learned parameters
    deployable: int   # parameters of the fused, plain model

    @property
    def learned(self) -> int:
        return self.trainable


def count_parameters(model: nn.Module) -> ParamCounts:
    from spa.adapters.convert import adapter_layers
    params = list(model.parameters())         # unique tensors (nn.Module drops repeats)
    # adapter terms fold into the weight; a layer whose learned tensor is its weight itself (block
    # fine-pruning) deploys it
    adapters = {id(p): p for layer in adapter_layers(model).values() for p in layer.adapter_parameters()
                if p is not layer.weight}
    adapter = sum(p.numel() for p in adapters.values())
    total = sum(p.numel() for p in params)
    return ParamCounts(total=total, trainable=sum(p.numel() for p in params if p.requires_grad),
                       deployable=total - adapter)
