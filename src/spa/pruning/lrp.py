"""LRP importance (Yeom et al., Pattern Recognition 2021) with zennit, as docs/method.md §2 specifies:

- adapters are fused into the weights first (the scores see the task's actual filters);
- BatchNorm is merged into the conv before it (zennit's ``NamedMergeBatchNorm``, pairs from the
  dependency groups);
- z⁺ for convs, z^β (``ZBox``, bounds from the input normalisation) for the first conv,
  ε = 1e-6 for linear layers, pooling and the residual sums; activations pass relevance through;
- timm's residual blocks (ResNet BasicBlock / Bottleneck; the inverted residual and depthwise-
  separable blocks of EfficientNet / MobileNetV2) get a canonizer that routes ``x + shortcut``
  through zennit's ``Sum`` module, so the addition has its own (ε) rule instead of an in-place add;
- ReLU6 (EfficientNet-Lite, MobileNetV2) passes relevance through, like ReLU; a depthwise conv
  takes z⁺ like any conv (its modified forward is the same grouped conv), so relevance stays
  within each channel, as the depthwise conv's own contributions do;
- relevance starts at the true class (the one-hot of the label times its logit).

Speed: zennit's z⁺ runs two modified passes per conv (positive inputs × positive weights, negative
× negative). A conv whose inputs are non-negative (after a ReLU: every conv of a ResNet or VGG but
the first) gets :class:`ZPlusNonNegative`, the first pass alone, which equals z⁺ there; which convs
those are is read from the first scored batch.

The score of a channel is Σ |R| over the batch and positions at the producer's output, summed over
the scored batches; it is normalised per layer with L1.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
from zennit.composites import MixedComposite, NameMapComposite, SpecialFirstLayerMapComposite
from zennit.core import BasicHook, Composite, Stabilizer
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Pass, ZBox, ZPlus

from spa.adapters.convert import fuse
from spa.pruning.groups import ChannelGroup
from spa.pruning.importance import CRITERIA, Importance, Scores, producer_names, writes_last_dim

EPSILON = 1e-6
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU)
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


def _efficientnet_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm InvertedResidual / DepthwiseSeparableConv forward with the skip addition as a ``Sum``."""
    shortcut = x
    if getattr(self, "conv_s2d", None) is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    if isinstance(self, InvertedResidual):
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
    else:
        x = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
    if self.has_skip:
        x = self.canonizer_sum(torch.stack([self.drop_path(x), shortcut], dim=-1))
    return x


class TimmResNetCanonizer(AttributeCanonizer):
    """Residual blocks of timm ResNets and EfficientNet / MobileNetV2: the addition becomes a
    ``zennit.layer.Sum`` module."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module):
        if isinstance(module, (BasicBlock, Bottleneck)):
            return {"forward": _block_forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, (InvertedResidual, DepthwiseSeparableConv)) and module.has_skip:
            return {"forward": _efficientnet_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> TimmResNetCanonizer:
        return TimmResNetCanonizer()


class ZPlusNonNegative(BasicHook):
    """z⁺ for a layer whose inputs are non-negative: R_i = x_i Σ_j w⁺_ij R_j / (Σ_i x_i w⁺_ij + b⁺_j),
    one modified pass. On inputs ≥ 0 it equals zennit's ``ZPlus`` (whose second, negative-input
    pass is then zero) at half the cost."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        stabilize = Stabilizer.ensure(stabilizer)
        super().__init__(input_modifiers=[lambda input: input.clamp(min=0)], param_modifiers=[ClampMod(min=0.)],
                         output_modifiers=[lambda output: output],
                         gradient_mapper=lambda out_grad, outputs: [out_grad / stabilize(outputs[0])],
                         reducer=lambda inputs, gradients: inputs[0] * gradients[0])


@torch.no_grad()
def nonnegative_input_convs(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the convs whose input is ≥ 0 everywhere on ``x`` (one plain forward pass)."""
    minima: dict[str, float] = {}
    handles = [m.register_forward_pre_hook(lambda m, inputs, n=n: minima.__setitem__(n, float(inputs[0].min())))
               for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {n for n, v in minima.items() if v >= 0}


def composite(groups: list[ChannelGroup], low: torch.Tensor, high: torch.Tensor,
              nonnegative: set[str] | frozenset[str] = frozenset()):
    """The LRP composite (module docstring); convs in ``nonnegative`` get :class:`ZPlusNonNegative`."""
    merges = [([producer], bn) for g in groups for producer, bn in g.bn_of.items()]
    layer_map = [(ACTIVATIONS, Pass()), (Sum, Epsilon(EPSILON)), (POOLS, Epsilon(EPSILON)),
                 (nn.Conv2d, ZPlus()), (nn.Linear, Epsilon(EPSILON))]
    first_map = [(nn.Conv2d, ZBox(low=low, high=high))]
    canonizers = [NamedMergeBatchNorm(merges), TimmResNetCanonizer()]
    if not nonnegative:
        return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map, canonizers=canonizers)
    return MixedComposite([NameMapComposite([(tuple(sorted(nonnegative)), ZPlusNonNegative())]),
                           SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map)],
                          canonizers=canonizers)


def relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor, comp: Composite,
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

    def __init__(self, low: torch.Tensor, high: torch.Tensor, fast_zplus: bool = True, **_) -> None:
        """``low``/``high``: the smallest and largest normalised input value per channel, (1, C, 1, 1);
        ``fast_zplus``: one-pass z⁺ on convs with non-negative inputs (module docstring)."""
        self.low, self.high, self.fast_zplus = low, high, fast_zplus

    def score(self, model: nn.Module, groups: list[ChannelGroup], loader: Iterable, device: torch.device,
              max_batches: int | None = None) -> Scores:
        fused = fuse(model).eval()
        for p in fused.parameters():
            p.requires_grad_(False)
        names = producer_names(groups)
        sums: Scores = {}
        nonnegative: set[str] | None = None
        for step, (x, y) in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            if nonnegative is None:
                nonnegative = nonnegative_input_convs(fused, x) if self.fast_zplus else set()
            low, high = (b.to(device).expand_as(x) for b in (self.low, self.high))
            _, captured, _ = relevance(fused, x, y, composite(groups, low, high, nonnegative), names)
            for n in names:
                r = captured[n].abs()
                conv_map = r.dim() == 4 and not writes_last_dim(fused.get_submodule(n))
                stat = (r.sum(dim=(0, 2, 3)) if conv_map else r.reshape(-1, r.shape[-1]).sum(dim=0)).double().cpu()
                sums[n] = sums[n] + stat if n in sums else stat
        return sums


def input_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images of pixels in [0, 1] lie in [(0 - mean)/std, (1 - mean)/std] per channel."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


CRITERIA[LRPImportance.name] = LRPImportance
