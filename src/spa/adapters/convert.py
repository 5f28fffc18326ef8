"""Turn a timm model into an adapted one (``convert``), fold adapters back in (``fuse``), and set
the paper's trainable set: adapters, all normalisation layers, biases and the new head."""
from __future__ import annotations

import copy
import logging
from typing import Iterable, Sequence

import torch.nn as nn

from spa.adapters.layers import AdapterLayer, SPLoRAConv2d, SPLoRALinear, SPPaRAConv2d

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
DEFAULT_EXCLUDE = ("patch_embed.proj",)   # ViT patch embedding stays as pretrained (plus the head)


def head_names(model: nn.Module) -> list[str]:
    """Module names of the classifier head (timm's ``pretrained_cfg['classifier']``)."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "fc")
    return list(head) if isinstance(head, (list, tuple)) else [head]


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def convert(model: nn.Module, kind: str, rank: int | float = 16, init_range: float = 1e-4,
            exclude: Sequence[str] | None = None) -> list[str]:
    """Replace every eligible ``nn.Conv2d`` (and, for SPLoRA, ``nn.Linear``) of ``model`` in place.

    Skipped: the head, ``exclude`` (default: the ViT patch embedding), subclasses of Conv2d/Linear
    (e.g. timm's dynamic-padding convs), and convs with even or non-square kernels. Returns the
    names of the converted layers. The adapter shares the base weight's storage (no copy).
    """
    if kind not in ("splora", "sppara"):
        raise ValueError(f"unknown channel SPA kind {kind!r}")
    skip = list(head_names(model)) + list(DEFAULT_EXCLUDE if exclude is None else exclude)
    converted, skipped = [], []
    for name, module in list(model.named_modules()):
        if not name or _excluded(name, skip):
            continue
        if type(module) is nn.Conv2d:
            k = module.kernel_size
            if k[0] != k[1] or k[0] % 2 == 0 or module.padding_mode != "zeros":
                skipped.append(name)
                continue
            new = SPLoRAConv2d.from_module(module, rank, init_range) if kind == "splora" \
                else SPPaRAConv2d.from_module(module, init_range=init_range)
        elif type(module) is nn.Linear and kind == "splora":
            new = SPLoRALinear.from_module(module, rank, init_range)
        else:
            continue
        _set_module(model, name, new)
        converted.append(name)
    if skipped:
        log.warning("left %d layers without adapter (non-square/even kernels or padding modes): %s",
                    len(skipped), skipped[:5])
    if not converted:
        raise ValueError(f"adapter kind {kind!r} found no eligible layer in {type(model).__name__}")
    return converted


def set_trainable(model: nn.Module, train_norm: bool = True) -> None:
    """The paper's trainable set: adapter factors, normalisation layers, biases, the head.
    Base weights of adapted and non-adapted layers are frozen."""
    for param in model.parameters():
        param.requires_grad_(False)
    heads = head_names(model)
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            for param in module.adapter_parameters():
                param.requires_grad_(True)
        if train_norm and isinstance(module, NORM_TYPES):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
        if name and _excluded(name, heads):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A plain model: every adapter layer replaced by its fused ``nn.Conv2d``/``nn.Linear``
    (W + ΔW), so the deployable network is an ordinary timm model."""
    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            fused = module.to_module()
            fused.train(module.training)
            _set_module(model, name, fused)
    return model


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}
