"""Pear: prune whole low-rank adapters, share important ones into the pruned positions, and keep a
knowledge checkpoint of what was pruned (Zhong & Zhou, arXiv:2409.19733).

**Reconstructed** from the paper's description (docs/method.md §7: its code could not be read).
Every unknown is a knob, and the defaults are our guesses:

- positions: the SPLoRA/LoRA layers of the model (``adapter.options.positions=pear``: a ViT's
  qkv / proj / fc1 / fc2, a CNN's pointwise convs), in module order (depth);
- importance (:func:`importance`), after a warm-up, over K batches: ``taylor`` |Σ_{θ∈A,B} θ·∂L/∂θ|
  with the gradient summed over the K batches (in eval mode, so scoring changes nothing: BatchNorm
  keeps its running statistics), ``magnitude`` ‖s·B·A‖_F, ``random``;
- plan (:func:`make_plan`): the m = round(ρ·N) least important positions are pruned; each receives a
  donor among the kept positions **of its shape** (``rank``: the i-th least important pruned one of
  a shape gets the i-th most important kept one of that shape, cycling when there are more pruned
  than kept; ``nearest``: the kept one nearest in depth, the more important on a tie); a shape with
  no kept position gives its pruned positions no donor (recorded as null);
- sharing (:func:`apply_plan`): ``tied`` (the pruned layer uses the donor's own A and B parameters:
  one update at both positions, gradients summed by autograd), ``copy`` (a trainable copy), ``none``;
- knowledge checkpoint: ``fold`` (the pruned adapter's s·B·A is kept as a frozen residual at its
  position and stored with the task, as its two factors: r·(out + in) numbers, not out·in),
  ``blend`` (the donor's factors start as a convex blend of its own and the pruned ones', weight
  ``blend_weight`` on the pruned, shared equally among several; default: importance-weighted,
  s_d / (s_d + Σ s_i) on the donor and s_i / (s_d + Σ s_i) on each pruned one), ``none``. The blend is
  made from the values before any sharing, so it does not depend on the order of the positions, and
  ties and copies are made after it. A pruned position without a donor keeps no trainable update
  (B = 0, frozen).
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import RESIDUAL, AdapterLayer
from spa.adapters.convert import adapter_layers

IMPORTANCES = ("taylor", "magnitude", "random")
MAPPINGS = ("rank", "nearest")
SHARINGS = ("tied", "copy", "none")
CHECKPOINTS = ("fold", "blend", "none")


def positions(model: nn.Module) -> dict[str, AdapterLayer]:
    """Pear's positions: the low-rank (A, B) adapter layers of ``model``, in module order."""
    return {name: layer for name, layer in adapter_layers(model).items() if hasattr(layer, "A")}


def shape_of(layer: AdapterLayer) -> tuple[int, int]:
    """What a donor must match: the (out, in) shape of the update B·A."""
    return int(layer.B.shape[0]), int(layer.A.shape[1])


def importance(model: nn.Module, kind: str, batches: Iterable, device: torch.device, seed: int = 0,
               autocast=None) -> dict[str, float]:
    """The importance of every position (see the module docstring) over ``batches`` (x, y)."""
    layers = positions(model)
    if kind == "random":
        rng = random.Random(seed)
        return {name: rng.random() for name in layers}
    if kind == "magnitude":
        with torch.no_grad():
            return {name: float((layer.scale * (layer.B @ layer.A)).norm()) for name, layer in layers.items()}
    if kind != "taylor":
        raise ValueError(f"Pear importance {kind!r}: use one of {IMPORTANCES}")
    params = {id(p): p for layer in layers.values() for p in (layer.A, layer.B)}
    grads = {key: torch.zeros_like(p) for key, p in params.items()}
    was_training = model.training
    model.eval()       # as the channel criteria: BN running statistics stay as trained, no dropout noise
    seen = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        context = autocast() if autocast is not None else torch.enable_grad()
        with context:
            loss = F.cross_entropy(model(x), y)
        found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for key, grad in zip(params, found):
            if grad is not None:
                grads[key] += grad.to(grads[key].dtype)       # half under AMP: summed in the parameter's dtype
        seen += 1
    model.train(was_training)
    if not seen:
        raise ValueError("Pear's Taylor importance saw no batch: the training loader is empty")
    return {name: float(sum((p.detach() * grads[id(p)]).sum() for p in (layer.A, layer.B)).abs())
            for name, layer in layers.items()}


def make_plan(model: nn.Module, scores: dict[str, float], ratio: float, mapping: str = "rank") -> dict[str, Any]:
    """Which positions are pruned and which donor each receives (see the module docstring)."""
    if mapping not in MAPPINGS:
        raise ValueError(f"Pear mapping {mapping!r}: use one of {MAPPINGS}")
    if not 0 <= ratio < 1:
        raise ValueError(f"Pear prune ratio {ratio}: use a number in [0, 1)")
    layers = positions(model)
    names = list(layers)
    depth = {name: i for i, name in enumerate(names)}
    shapes = {name: shape_of(layer) for name, layer in layers.items()}
    m = round(ratio * len(names))
    ascending = sorted(names, key=lambda n: (scores[n], depth[n]))
    pruned, kept = ascending[:m], ascending[m:]
    donors: dict[str, str | None] = {}
    for shape in dict.fromkeys(shapes[n] for n in pruned):
        receivers = [n for n in pruned if shapes[n] == shape]             # least important first
        candidates = [n for n in reversed(kept) if shapes[n] == shape]    # most important first
        for i, name in enumerate(receivers):
            if not candidates:
                donors[name] = None
            elif mapping == "rank":
                donors[name] = candidates[i % len(candidates)]
            else:
                donors[name] = min(candidates, key=lambda c: (abs(depth[c] - depth[name]), -scores[c]))
    return {"positions": names, "importance": {n: scores[n] for n in names}, "ratio": ratio, "mapping": mapping,
            "pruned": [n for n in names if n in set(pruned)], "donors": {n: donors[n] for n in names if n in donors},
            "shapes": {n: list(shapes[n]) for n in names}}


def apply_plan(model: nn.Module, plan: dict[str, Any], sharing: str = "tied", checkpoint: str = "fold",
               blend_weight: float | None = None, fresh: bool = True) -> None:
    """Prune and share in place as ``plan`` says. ``fresh``: at the pruning step (fold the pruned
    updates, blend the donors); ``fresh=False`` rebuilds the same structure on a model whose values
    are then loaded (a task file, a checkpoint): residual buffers of the right shape, the ties."""
    if sharing not in SHARINGS:
        raise ValueError(f"Pear sharing {sharing!r}: use one of {SHARINGS}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"Pear knowledge checkpoint {checkpoint!r}: use one of {CHECKPOINTS}")
    layers = positions(model)
    missing = [n for n in plan["positions"] if n not in layers]
    if missing or len(layers) != len(plan["positions"]):
        raise ValueError(f"the Pear plan does not fit this model: positions {missing[:3]} missing, or "
                         f"{len(layers)} positions against the plan's {len(plan['positions'])}")
    donors = {name: plan["donors"].get(name) if sharing != "none" else None for name in plan["pruned"]}
    with torch.no_grad():
        if checkpoint == "blend" and fresh:
            _blend(layers, donors, plan["importance"], blend_weight)
        for name in plan["pruned"]:
            layer, donor_name = layers[name], donors[name]
            donor = layers[donor_name] if donor_name is not None else None
            if checkpoint == "fold":          # kept as its factors, s·B and A: r·(out + in) numbers
                fold_b, fold_a = (layer.scale * layer.B.detach(), layer.A.detach().clone()) if fresh else \
                    (torch.zeros_like(layer.B), torch.zeros_like(layer.A))
                for buffer, new, dim in zip(RESIDUAL, (fold_b, fold_a), (1, 0)):
                    old = layer._buffers.get(buffer)
                    layer.register_buffer(buffer, new if old is None else torch.cat([old, new], dim))
            if donor is None:                  # no trainable update left here
                layer.B.zero_()
                layer.A.requires_grad_(False)
                layer.B.requires_grad_(False)
            elif sharing == "tied":
                layer.A, layer.B = donor.A, donor.B
            else:                              # copy: the donor's values, trained on their own
                layer.A = nn.Parameter(donor.A.detach().clone(), requires_grad=donor.A.requires_grad)
                layer.B = nn.Parameter(donor.B.detach().clone(), requires_grad=donor.B.requires_grad)
            layer._cache.clear()


def _blend(layers: dict[str, AdapterLayer], donors: dict[str, str | None], scores: dict[str, float],
           blend_weight: float | None) -> None:
    """Each donor's factors become the convex blend of its own and those of every pruned position it
    receives (see the module docstring), all read before any is written: the result does not depend
    on the order the positions are listed in."""
    received: dict[str, list[str]] = {}
    for name, donor in donors.items():
        if donor is not None:
            received.setdefault(donor, []).append(name)
    blended = {}
    for donor, pruned in received.items():
        if blend_weight is not None:
            weights = {donor: 1 - blend_weight, **{p: blend_weight / len(pruned) for p in pruned}}
        else:
            total = max(scores[donor] + sum(scores[p] for p in pruned), 1e-30)
            weights = {n: scores[n] / total for n in (donor, *pruned)}
        # summed in a fixed order (the donor, then the pruned by name): the same bits whatever the plan's order
        order = [donor, *sorted(pruned)]
        blended[donor] = tuple(sum(weights[n] * getattr(layers[n], f).detach() for n in order) for f in ("A", "B"))
    for donor, (a, b) in blended.items():
        layers[donor].A.copy_(a)
        layers[donor].B.copy_(b)


def residual_parameters(model: nn.Module) -> int:
    """Checkpoint material: the numbers in the folded residuals' factors (stored per task, frozen)."""
    return sum(m._buffers[n].numel() for m in model.modules() for n in RESIDUAL if m._buffers.get(n) is not None)
