"""Channel importance criteria (docs/method.md §2), one class each.

Each criterion scores the output channels of every producer layer, with hooks on the layer
outputs (so the score does not depend on how an adapter parametrises the layer), accumulated over
a number of batches with no optimiser step. Scores are then normalised per layer (L1: ``v / Σv``
for weight and LRP; L2: ``|v| / ‖v‖₂`` for gradient and Taylor), combined over a group's producers
(mean) and ranked globally by :mod:`spa.pruning.schedule`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import AdapterLayer
from spa.pruning.groups import ChannelGroup

Scores = dict[str, torch.Tensor]     # producer name -> one score per output channel


class Importance:
    """Base class: ``score(model, groups, loader, device, max_batches) -> {producer: scores}``."""

    name = "base"
    normalization = "l1"
    needs_data = True

    def score(self, model: nn.Module, groups: list[ChannelGroup], loader: Iterable, device: torch.device,
              max_batches: int | None = None) -> Scores:
        raise NotImplementedError


def producer_names(groups: list[ChannelGroup]) -> list[str]:
    """The layers whose output channels the groups remove, group by group, each once (a layer whose
    outputs are concatenated can write parts of two groups)."""
    return list(dict.fromkeys(p for g in groups for p in g.producers))


def _channel_mean(t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Mean over every dim but the channel one: dim 1 of a conv's NCHW output, the last dim of a
    Linear's (tokens, or an NHWC map as EdgeNeXt's and ConvNeXt's MLPs take)."""
    if t.dim() == 4 and not channels_last:
        return t.mean(dim=(0, 2, 3))
    return t.reshape(-1, t.shape[-1]).mean(dim=0)


def writes_last_dim(module: nn.Module) -> bool:
    """A Linear-like layer (2-d weight, adapted or not): its channels are its output's last dim."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


class _ActivationGradient(Importance):
    """Shared hook machinery: Σ over batches of mean(f(a, ∂L/∂a)) at each producer output.

    ∂L/∂a comes from ``torch.autograd.grad`` on the captured outputs, not from ``.grad`` after a full
    backward: no parameter gradient is computed (fine-pruning would otherwise pay for every weight's),
    and a layer whose output needs no gradient for training (a frozen, bias-free conv at the start of
    the network) is scored all the same, since the input is marked as requiring one.
    """

    normalization = "l2"

    def statistic(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model, groups, loader, device, max_batches=None):
        names = producer_names(groups)
        sums: Scores = {}
        outputs: dict[str, torch.Tensor] = {}

        def keep_output(name):
            def hook(module, inputs, output):
                outputs[name] = output
            return hook

        handles = [model.get_submodule(n).register_forward_hook(keep_output(n)) for n in names]
        last = {n: writes_last_dim(model.get_submodule(n)) for n in names}
        was_training = model.training
        model.eval()       # BN running statistics stay as trained; no dropout noise in the scores
        try:
            for step, (x, y) in enumerate(loader):
                if max_batches is not None and step >= max_batches:
                    break
                x, y = x.to(device).requires_grad_(True), y.to(device)
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
                with torch.no_grad():
                    for n, grad in zip(names, grads):
                        grad = torch.zeros_like(outputs[n]) if grad is None else grad
                        stat = _channel_mean(self.statistic(outputs[n].detach(), grad),
                                             last[n]).double().cpu()
                        sums[n] = sums[n] + stat if n in sums else stat
                outputs.clear()
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return sums


class GradientImportance(_ActivationGradient):
    """Sun et al. 2017: Σ_batches mean_{n,h,w} ∂L/∂a (signed; absolute value at normalisation)."""
    name = "gradient"

    def statistic(self, activation, grad):
        return grad


class TaylorImportance(_ActivationGradient):
    """Molchanov et al. 2017: Σ_batches mean_{n,h,w} a·∂L/∂a (signed; absolute at normalisation)."""
    name = "taylor"

    def statistic(self, activation, grad):
        return activation * grad


def _fused_weight(module: nn.Module) -> torch.Tensor:
    return module.fused_weight() if isinstance(module, AdapterLayer) else module.weight


class WeightImportance(Importance):
    """Li et al. 2017: L1 norm of each conv filter after folding the following BatchNorm (and the
    adapter) into it: Σ |W'_j| · |γ_j| / √(var_j + ε). Rows of Linear layers (ViT MLPs and qkv) use
    the L2 norm, as the paper's transformer runs."""
    name = "weight"
    normalization = "l1"
    needs_data = False

    @torch.no_grad()
    def score(self, model, groups, loader=None, device=None, max_batches=None):
        scores: Scores = {}
        for g in groups:
            for n in g.producers:
                w = _fused_weight(model.get_submodule(n)).detach()
                rows = w.reshape(w.shape[0], -1).double().cpu()
                norm = rows.abs().sum(dim=1) if w.dim() == 4 else rows.norm(p=2, dim=1)
                if n in g.bn_of:
                    bn = model.get_submodule(g.bn_of[n])
                    scale = bn.weight.detach().abs() if bn.weight is not None else torch.ones_like(bn.running_var)
                    norm = norm * (scale / torch.sqrt(bn.running_var + bn.eps)).double().cpu()
                scores[n] = norm
        return scores


class RandomImportance(Importance):
    """Uniform random scores: the sanity baseline every criterion should beat."""
    name = "random"
    needs_data = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, model, groups, loader=None, device=None, max_batches=None):
        return {n: torch.rand(model.get_submodule(n).weight.shape[0], generator=self.generator, dtype=torch.float64)
                for g in groups for n in g.producers}


CRITERIA: dict[str, type[Importance]] = {c.name: c for c in (WeightImportance, GradientImportance,
                                                              TaylorImportance, RandomImportance)}


# Per-layer normalisations (v = |scores| of one layer's channels). The paper's are l1 (weight, LRP) and l2
# (gradient, Taylor): both shrink each channel's score as its layer widens, so global ranking empties the
# widest layers first (EfficientNet-Lite0's 1,280-wide conv_head in two 10 % steps). mean is Torch-Pruning's
# default for global ranking: a channel is scored against its own layer's average, whatever the width.
NORMALIZATIONS = ("l1", "l2", "mean", "max", "none")


def normalize(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-layer normalisation of |v|: ``l1`` v / Σv, ``l2`` v / ‖v‖₂, ``mean`` v / mean(v), ``max``
    v / max(v), ``none`` v itself. A layer whose denominator is 0 or not finite scores 0."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"pruning.normalization={kind!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    v = scores.abs()
    if kind == "none":
        return v
    denom = {"l1": v.sum, "l2": lambda: v.norm(p=2), "mean": v.mean, "max": v.max}[kind]()
    return v / denom if float(denom) > 0 and math.isfinite(float(denom)) else torch.zeros_like(v)


def group_scores(groups: list[ChannelGroup], scores: Scores, normalization: str,
                 reduction: str = "mean") -> dict[str, torch.Tensor]:
    """One score per channel of each group: its producers' normalised scores, combined over the
    producers that write the channel (all of them, unless the group joins parts: a concatenation)."""
    if reduction not in ("mean", "sum", "max"):
        raise ValueError(f"pruning.group_reduction={reduction!r} is unknown; use mean, sum or max")
    out = {}
    for g in groups:
        stacked = torch.stack([g.producer_scores(p, normalize(scores[p], normalization)) for p in g.producers])
        if g.coverage is None:
            out[g.root] = stacked.mean(dim=0) if reduction == "mean" else stacked.sum(dim=0) \
                if reduction == "sum" else stacked.max(dim=0).values
            continue
        written = ~torch.isnan(stacked)
        if reduction == "max":
            out[g.root] = stacked.masked_fill(~written, float("-inf")).max(dim=0).values
        else:
            total = stacked.nan_to_num(0.0).sum(dim=0)
            out[g.root] = total / written.sum(dim=0).clamp(min=1) if reduction == "mean" else total
    return out
