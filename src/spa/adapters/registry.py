"""Registry of adapter kinds (see the package docstring)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from spa.adapters.block import convert_splopa
from spa.adapters.convert import convert, excluded_names, set_trainable

log = logging.getLogger(__name__)

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
    """Convert ``model`` in place for adapter ``kind`` and set its trainable parameters."""
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


def _channel_spa(kind: str):
    def apply(model: nn.Module, rank: int | float = 16, init_range: float = 1e-4,
              exclude: Sequence[str] | None = None, train_norm: bool = True, rank_limit: str = "paper",
              scale: float = 1.0, positions: str | Sequence[str] | None = None) -> nn.Module:
        layers = convert(model, kind, rank=rank, init_range=init_range, exclude=exclude, rank_limit=rank_limit,
                         scale=scale, positions=positions)
        set_trainable(model, train_norm=train_norm)
        log.info("%s: %d layers adapted%s; trainable: adapters, normalisation layers, biases, head",
                 kind, len(layers), "" if kind == "sppara" else f" (rank {rank})")
        return model
    apply.__doc__ = f"Channel SPA ({kind}) on every eligible layer, base weights frozen."
    return apply


register_adapter("splora")(_channel_spa("splora"))
register_adapter("sppara")(_channel_spa("sppara"))


@register_adapter("splopa")
def splopa(model: nn.Module, num_prototypes: int = 64, block_shape: Sequence[int] = (32, 32),
           prototype_rank: int = 2, shared: bool = True, init_range: float = 1e-4,
           exclude: Sequence[str] | None = None, train_norm: bool = True) -> nn.Module:
    """Block SPA (SPLoPA) on every Linear and pointwise conv the block divides, base weights frozen;
    prototypes shared by all of them (``shared=True``) or per layer."""
    layers = convert_splopa(model, excluded_names(model, exclude), num_prototypes, block_shape, prototype_rank, shared,
                            init_range)
    set_trainable(model, train_norm=train_norm)
    log.info("splopa: %d layers adapted (%d prototypes of rank %d, %s blocks, %s); trainable: adapters, "
             "normalisation layers, biases, head", len(layers), num_prototypes, prototype_rank,
             "x".join(map(str, block_shape)), "shared" if shared else "per layer")
    return model
