"""Registry of adapter kinds (see the package docstring)."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

AdapterFn = Callable[..., nn.Module]
ADAPTERS: dict[str, AdapterFn] = {}


def register_adapter(kind: str) -> Callable[[AdapterFn], AdapterFn]:
    def decorator(fn: AdapterFn) -> AdapterFn:
        if kind in ADAPTERS:
            raise ValueError(f"adapter kind {kind!r} registered twice")
        ADAPTERS[kind] = fn
        return fn
    return decorator


def apply_adapter(model: nn.Module, kind: str, **options: Any) -> nn.Module:
    """Convert ``model`` for adapter ``kind`` and set its trainable parameters."""
    if kind not in ADAPTERS:
        raise ValueError(f"adapter.kind={kind!r} is unknown; available: {sorted(ADAPTERS)}")
    return ADAPTERS[kind](model, **options)


@register_adapter("finetune")
def finetune(model: nn.Module, **options: Any) -> nn.Module:
    """Fine-tuning: no adapter, every parameter is learned."""
    if options:
        raise ValueError(f"adapter=finetune takes no options, got {sorted(options)}")
    for param in model.parameters():
        param.requires_grad_(True)
    return model
