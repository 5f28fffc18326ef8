"""LRP importance (Yeom et al., Pattern Recognition 2021) with zennit, as spa.md §2 specifies:

- adapters are fused into the weights first (the scores see the task's actual filters);
- BatchNorm is merged into the conv before it (zennit's ``NamedMergeBatchNorm``, pairs from the
  dependency groups);
- z⁺ for convs, z^β (``ZBox``, bounds from the input normalisation) for the first conv,
  ε = 1e-6 for linear layers, pooling and the residual sums; activations pass relevance through;
- timm's residual blocks get a canonizer that routes ``x + shortcut`` through zennit's ``Sum``
  module, so the addition has its own (ε) rule instead of an in-place add;
- relevance starts at the true class (the one-hot of the label times its logit).

The score of a channel is Σ |R| over the batch and positions at the producer's output, summed over
the scored batches; it is normalised per layer with L1.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
from zennit.composites import SpecialFirstLayerMapComposite
from zennit.layer import Sum
from zennit.rules import Epsilon, Pass, ZBox, ZPlus

from spa.adapters.convert import fuse
from spa.pruning.groups import ChannelGroup
from spa.pruning.importance import CRITERIA, Importance, Scores, _producers

EPSILON = 1e-6
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU)
POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm BasicBlock / Bottleneck forward with the residual addition as a ``Sum`` module."""
    shortcut = x
    x = self.act1(self.drop_block(self.bn1(self.conv1(x)))) if isinstance(self, BasicBlock) \
        else self.act1(self.bn1(self.conv1(x)))
    if isinstance(self, BasicBlock):
        x = self.bn2(self.conv2(self.aa(x)))
    else:
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    x = self.canonizer_sum(torch.stack([x, shortcut], dim=-1))
    return (self.act2 if isinstance(self, BasicBlock) else self.act3)(x)


class TimmResNetCanonizer(AttributeCanonizer):
    """Residual blocks of timm ResNets: the addition becomes a ``zennit.layer.Sum`` module."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module):
        if isinstance(module, (BasicBlock, Bottleneck)):
            return {"forward": _block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> "TimmResNetCanonizer":
        return TimmResNetCanonizer()


def composite(groups: list[ChannelGroup], low: torch.Tensor, high: torch.Tensor) -> SpecialFirstLayerMapComposite:
    merges = [([producer], bn) for g in groups for producer, bn in g.bn_of.items()]
    layer_map = [(ACTIVATIONS, Pass()), (Sum, Epsilon(EPSILON)), (POOLS, Epsilon(EPSILON)),
                 (nn.Conv2d, ZPlus()), (nn.Linear, Epsilon(EPSILON))]
    first_map = [(nn.Conv2d, ZBox(low=low, high=high))]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map,
                                         canonizers=[NamedMergeBatchNorm(merges), TimmResNetCanonizer()])


def relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, comp: SpecialFirstLayerMapComposite,
              watch: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Input relevance, relevance at the outputs of the ``watch`` modules, and the start relevance
    (true-class logits) for one batch, under composite ``comp`` (``model`` in eval mode)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            output.register_hook(lambda grad: captured.__setitem__(name, grad.detach()))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in watch]
    try:
        with comp.context(model) as modified:
            x = x.detach().requires_grad_(True)
            out = modified(x)
            start = torch.zeros_like(out).scatter(1, target[:, None], 1.0) * out
            (grad,) = torch.autograd.grad(out, x, grad_outputs=start.detach())
    finally:
        for h in handles:
            h.remove()
    return grad.detach(), captured, start.detach().sum(dim=1)


class LRPImportance(Importance):
    name = "lrp"
    normalization = "l1"

    def __init__(self, low: torch.Tensor, high: torch.Tensor, **_) -> None:
        """``low``/``high``: the smallest and largest normalised input value per channel, (1, C, 1, 1)."""
        self.low, self.high = low, high

    def score(self, model: nn.Module, groups: list[ChannelGroup], loader: Iterable, device: torch.device,
              max_batches: int | None = None) -> Scores:
        fused = fuse(model).eval()
        for p in fused.parameters():
            p.requires_grad_(False)
        names = _producers(groups)
        sums: Scores = {}
        for step, (x, y) in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            low, high = (b.to(device).expand_as(x) for b in (self.low, self.high))
            _, captured, _ = relevance(fused, x, y, composite(groups, low, high), names)
            for n in names:
                r = captured[n].abs()
                stat = (r.sum(dim=(0, 2, 3)) if r.dim() == 4 else r.reshape(-1, r.shape[-1]).sum(dim=0)).double().cpu()
                sums[n] = sums[n] + stat if n in sums else stat
        return sums


def input_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images of pixels in [0, 1] lie in [(0 - mean)/std, (1 - mean)/std] per channel."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


CRITERIA[LRPImportance.name] = LRPImportance
