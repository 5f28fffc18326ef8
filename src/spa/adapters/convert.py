"""Turn a timm model into an adapted one (``convert``), fold adapters back in (``fuse``), and set
the paper's trainable set: adapters, all normalisation layers, biases and the new head."""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch.nn as nn

from spa.adapters.base import CONV_CLASSES, AdapterLayer, resolve_rank
from spa.adapters.layers import conv_adapter_class, layer_kind
from spa.models.heads import head_names
from spa.utils import set_module

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
DEFAULT_EXCLUDE = ("patch_embed.proj",)   # ViT patch embedding stays as pretrained (plus the head)
# adapter.options.rank_limit: what a rank above a layer's usable rank min(in / groups, out) does.
# paper: the rank is taken literally (the authors' rule; e.g. rank 8 at a 3-channel stem, 8 x 1 on a
# depthwise conv), logged per layer, and refused only when no adapted layer can use it (a typo);
# clamp: each such layer gets rank min(in / groups, out), logged and recorded.
RANK_LIMITS = ("paper", "clamp")


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``patterns`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


def excluded_names(model: nn.Module, exclude: Sequence[str] | None) -> list[str]:
    """What no adapter converts: the head, and ``exclude`` (default: the ViT patch embedding)."""
    return list(head_names(model)) + list(DEFAULT_EXCLUDE if exclude is None else exclude)


def usable_rank(layer: nn.Module) -> int:
    """The largest rank a SPLoRA update B·A of ``layer`` can have: min(in / groups, out)."""
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features)
    return min(layer.in_channels // layer.groups, layer.out_channels)


def out_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def layer_ranks(planned: list[tuple[str, nn.Module]], rank: int | float, rank_limit: str) -> dict[str, int]:
    """The rank each planned layer gets under ``rank_limit`` (see :data:`RANK_LIMITS`); raises where
    ``rank`` is of no use to any layer (``paper``) or ``rank_limit`` is unknown."""
    if rank_limit not in RANK_LIMITS:
        raise ValueError(f"adapter.options.rank_limit={rank_limit!r}: use paper (the rank as given) or clamp "
                         f"(at most min(in / groups, out) per layer)")
    asked = {name: resolve_rank(rank, out_width(m)) for name, m in planned}
    usable = {name: usable_rank(m) for name, m in planned}
    above = [name for name in asked if asked[name] > usable[name]]
    if rank_limit == "clamp":
        if above:
            log.info("rank_limit=clamp: %d of %d layers get a rank below %s (their min(in / groups, out)): %s",
                     len(above), len(asked), rank, [f"{n}={usable[n]}" for n in above[:5]])
        return {name: min(asked[name], usable[name]) for name in asked}
    if planned and len(above) == len(planned):
        best = max(usable, key=usable.get)
        raise ValueError(
            f"adapter.options.rank={rank} is above what every adapted layer can use: a SPLoRA update B·A has rank "
            f"at most min(in / groups, out), {usable[best]} at the widest layer ({best}), so the run would learn "
            f"{sum(asked[n] * (m.weight.shape[1] + out_width(m)) for n, m in planned):,} adapter parameters for "
            f"nothing. Fix: adapter.options.rank<={usable[best]}, or adapter.options.rank_limit=clamp to cap it per "
            f"layer.")
    if above:
        log.warning("rank %s is above min(in / groups, out) at %d of %d layers (kept as given, the paper's rule; "
                    "adapter.options.rank_limit=clamp caps them): %s", rank, len(above), len(asked),
                    [f"{n} (usable {usable[n]})" for n in above[:5]])
    return asked


def rank_report(model: nn.Module, rank: int | float, rank_limit: str) -> dict[str, object]:
    """What ``summary.json`` records of the ranks: the asked rank, the limit, and every layer whose
    asked rank is above its usable one (with that usable rank; under ``clamp`` it is what the layer got)."""
    above = {}
    for name, layer in adapter_layers(model).items():
        if hasattr(layer, "A"):
            usable = min(layer.A.shape[1], layer.B.shape[0])
            if resolve_rank(rank, layer.B.shape[0]) > usable:
                above[name] = usable
    return {"rank": rank, "rank_limit": rank_limit, "layers_above_usable": above}


# Pear's default adapter positions (docs/method.md §7): the qkv / proj / fc1 / fc2 Linears of a ViT's blocks;
# in a CNN, its pointwise convs (1 x 1, one group)
VIT_POSITIONS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _at_position(name: str, module: nn.Module, positions: str | Sequence[str] | None) -> bool:
    """Whether ``positions`` (``adapter.options.positions``) adapts layer ``name``: None = every
    eligible layer; ``pear`` = Pear's default positions (:data:`VIT_POSITIONS`, else pointwise convs);
    a list = the layers whose names end with one of its entries."""
    if positions is None:
        return True
    if positions == "pear":
        if isinstance(module, nn.Linear):
            return any(name.endswith("." + p) for p in VIT_POSITIONS)
        return module.kernel_size == (1, 1) and module.groups == 1
    return any(name == p or name.endswith("." + p) for p in positions)


def check_positions(positions: object) -> None:
    if positions is None or positions == "pear":
        return
    if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions or \
            not all(isinstance(p, str) and p for p in positions):
        raise ValueError(f"adapter.options.positions={positions!r}: use null (every eligible layer), pear (ViT qkv / "
                         f"proj / fc1 / fc2, CNN pointwise convs) or a list of layer-name endings, e.g. "
                         f"[attn.qkv,mlp.fc2]")


def _eligible(model: nn.Module, linear: bool, skip: list[str], positions: str | Sequence[str] | None
              ) -> tuple[list[tuple[str, nn.Module]], list[str], list[str]]:
    """The layers :func:`convert` would adapt, those it leaves out (kernels or padding modes no
    adapter fits) and those it refuses (subclasses it cannot stand in for), in module order."""
    planned, skipped, refused = [], [], []
    for name, module in model.named_modules():
        if not name or matches_any(name, skip) or \
                (isinstance(module, (nn.Conv2d, nn.Linear)) and not _at_position(name, module, positions)):
            continue
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size
            if type(module) not in CONV_CLASSES:
                refused.append(f"{name} ({type(module).__name__})")
            elif k[0] != k[1] or k[0] % 2 == 0 or module.padding_mode != "zeros":
                skipped.append(name)
            else:
                planned.append((name, module))
        elif isinstance(module, nn.Linear) and linear:
            (planned.append((name, module)) if type(module) is nn.Linear
             else refused.append(f"{name} ({type(module).__name__})"))
    return planned, skipped, refused


def convert(model: nn.Module, kind: str, rank: int | float = 16, init_range: float = 1e-4,
            exclude: Sequence[str] | None = None, rank_limit: str = "paper", scale: float = 1.0,
            positions: str | Sequence[str] | None = None) -> list[str]:
    """Replace every eligible conv (and, for SPLoRA, ``nn.Linear``) of ``model`` in place.

    Convs are ``nn.Conv2d`` and timm's TF-"same"-padding ``Conv2dSame`` (see ``CONV_CLASSES``);
    depthwise convs get their depthwise adapter class. Skipped: the head, ``exclude`` (default: the
    ViT patch embedding), and convs with even or non-square kernels or other padding modes (logged
    by name). Any other subclass of Conv2d / Linear is refused by name (it computes something else
    than its weight suggests); exclude it to keep it frozen. Returns the names of the converted
    layers. The adapter shares the base weight's storage (no copy). ``rank_limit``: see :data:`RANK_LIMITS`.
    ``scale``: s of ΔW = s·B·A (SPLoRA); ``positions``: which layers get one (see :func:`_at_position`).
    """
    spec = layer_kind(kind)
    check_positions(positions)
    planned, skipped, refused = _eligible(model, spec.linear is not None, excluded_names(model, exclude), positions)
    if refused:    # before anything is replaced: a refused model is left as it was
        raise TypeError(
            f"adapter {kind}: {len(refused)} layers are subclasses of Conv2d / Linear that the adapters cannot "
            f"stand in for: {refused[:5]}. Fix: keep them frozen with adapter.options.exclude="
            f"[{','.join(r.split(' ')[0] for r in refused[:5])}] (plus the default {list(DEFAULT_EXCLUDE)} if "
            f"the model has one), or use adapter=finetune.")
    if skipped:
        log.warning("left %d layers without adapter (non-square/even kernels or padding modes): %s",
                    len(skipped), skipped[:5])
    if not planned:
        where = "" if positions is None else f" at adapter.options.positions={positions}"
        raise ValueError(f"adapter kind {kind!r} found no eligible layer{where} in {type(model).__name__}")
    ranks = layer_ranks(planned, rank, rank_limit) if spec.ranked else {}
    for name, module in planned:
        cls = spec.linear if isinstance(module, nn.Linear) else conv_adapter_class(kind, module)
        options = {"rank": ranks[name], "scale": scale} if spec.ranked else {}
        new = cls.from_module(module, init_range=init_range, **options)
        set_module(model, name, new)
    return [name for name, _ in planned]


# a ViT's own tensors, learned with the adapters as its biases and norms are (the paper's ViT runs do)
TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")


def set_trainable(model: nn.Module, train_norm: bool = True) -> None:
    """The paper's trainable set: adapter factors, normalisation layers, biases, the head, and a
    ViT's class (register, distillation) tokens and position embedding (:data:`TOKENS`).
    Base weights of adapted and non-adapted layers are frozen."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name in TOKENS:
        token = getattr(model, name, None)
        if isinstance(token, nn.Parameter):
            token.requires_grad_(True)
    heads = head_names(model)
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            for param in module.adapter_parameters():
                param.requires_grad_(True)
        if train_norm and isinstance(module, NORM_TYPES):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
        if name and matches_any(name, heads):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)


@contextmanager
def head_only(model: nn.Module):
    """Inside, only the classifier head's parameters that were trainable stay trainable."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    head = {id(p) for name in head_names(model) for p in model.get_submodule(name).parameters()}
    for p, trainable in flags:
        p.requires_grad_(trainable and id(p) in head)
    try:
        yield
    finally:
        for p, trainable in flags:
            p.requires_grad_(trainable)


def freeze(model: nn.Module, names: list[str]) -> None:
    """``backbone.frozen``: no learner trains the parameters of these modules (the ViT runs of the
    paper's ICLR version freeze the patch embedding, ``patch_embed``, for fine-tuning too)."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"backbone.frozen names {name!r}, which {type(model).__name__} has not; use module "
                             f"names such as patch_embed") from err
        for p in module.parameters():
            p.requires_grad_(False)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A plain model: every adapter layer replaced by its fused ``nn.Conv2d``/``nn.Linear``
    (W + ΔW), so the deployable network is an ordinary timm model."""
    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            fused = module.to_module()
            fused.train(module.training)
            set_module(model, name, fused)
    return model


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}
