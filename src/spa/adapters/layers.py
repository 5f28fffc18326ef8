"""Channel SPA layers (docs/method.md §1): SPLoRA (low rank) and SPPaRA (pointwise), on Linear and Conv2d.

A frozen base ``weight`` W plus a learned update ΔW:
- SPLoRA: ΔW = B·A with ``A`` (rank × in) ~ kaiming_uniform(a=√5) and ``B`` (out × rank) ~ U(±init_range);
- SPPaRA: ΔW = P with ``P`` (out × in/groups) ~ U(±init_range).
On a k×k conv the update sits at the kernel centre tap only, so it equals a 1×1 conv in parallel
with the k×k conv and fuses into one plain conv.

Training runs the low-memory form ``Wx + B(Ax)`` (no per-step materialised ΔW) wherever it is the
cheaper one: on linear layers always, on convs where :func:`~spa.adapters.base.branch_is_cheaper` says so (elsewhere
``W + BA``, one conv); SPPaRA on a 1×1 conv trains through ``W + P``, since there ΔW is P itself.
In eval mode the fused weight W + ΔW is computed once and cached until a parameter changes (an
optimiser step, ``load_state_dict`` or ``.to()``), so inference (under ``torch.no_grad`` /
``inference_mode``) costs what the plain layer costs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import (
    AdapterLayer,
    ConvAdapter,
    LinearAdapter,
    branch_is_cheaper,
    is_depthwise,
    resolve_rank,
)


class _LowRank:
    """SPLoRA's factors: ``A`` (rank × in) ~ kaiming_uniform(a=√5), ``B`` (out × rank) ~ U(±init_range)."""

    weight: nn.Parameter
    A: nn.Parameter
    B: nn.Parameter
    ROW_TENSORS, COL_TENSORS = ("B",), ("A",)

    def _init_factors(self, out_features: int, in_features: int, rank: int | float, init_range: float,
                      scale: float = 1.0) -> None:
        r, w = resolve_rank(rank, out_features), self.weight
        self.scale = float(scale)
        self.A = nn.Parameter(torch.empty(r, in_features, device=w.device, dtype=w.dtype))
        self.B = nn.Parameter(torch.empty(out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.uniform_(self.B, -init_range, init_range)

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """s·B·A (out × in[/groups]; on a conv, the centre-tap update), plus a folded residual where
        the layer holds one (a pruned Pear position)."""
        delta = self.B @ self.A
        if self.scale != 1.0:
            delta = delta * self.scale
        residual = self.residual()
        return delta if residual is None else delta + residual

    def _scaled(self, branch: torch.Tensor) -> torch.Tensor:
        return branch * self.scale if self.scale != 1.0 else branch

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.A, self.B]


class SPLoRALinear(_LowRank, LinearAdapter):
    """y = (W + s·B·A) x + b (scale s = 1 unless given)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank: int | float = 16,
                 init_range: float = 1e-4, scale: float = 1.0) -> None:
        super().__init__(weight, bias)
        self._init_factors(self.out_features, self.in_features, rank, init_range, scale)

    @classmethod
    def from_module(cls, layer: nn.Linear, rank: int | float = 16, init_range: float = 1e-4,
                    scale: float = 1.0) -> SPLoRALinear:
        return cls(layer.weight, layer.bias, rank=rank, init_range=init_range, scale=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:       # out of place: with torch 2.14 the in-place add_ is 10-20 % slower on ViT shapes
            return F.linear(x, self._frozen(), self.bias) + self._scaled(F.linear(F.linear(x, self.A), self.B))
        return F.linear(x, self._eval_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


# ----------------------------------------------------------------------------- Conv2d
class SPLoRAConv2d(_LowRank, ConvAdapter):
    """W'[:, :, c, c] = W[:, :, c, c] + B·A, c = k // 2; grouped convs use in = in_channels / groups."""

    def __init__(self, conv: nn.Conv2d, rank: int | float = 16, init_range: float = 1e-4, scale: float = 1.0) -> None:
        super().__init__(conv)
        self._init_factors(self.out_channels, self.weight.shape[1], rank, init_range, scale)

    @classmethod
    def from_module(cls, layer: nn.Conv2d, rank: int | float = 16, init_range: float = 1e-4,
                    scale: float = 1.0) -> SPLoRAConv2d:
        return cls(layer, rank=rank, init_range=init_range, scale=scale)

    def _train_fused(self) -> bool:
        k = self.kernel_size[0]
        return not branch_is_cheaper(self.rank, self.weight.shape[1], self.out_channels, k * k) \
            or super()._train_fused()

    def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
        # A·x within each group (rank channels per group), then B: output channel o of group g reads
        # group g's rank channels, so the second grouped 1×1 conv's weight is B itself
        a = self.A if self.groups == 1 else self.A.repeat(self.groups, 1)
        z = F.conv2d(x, a[:, :, None, None], groups=self.groups)
        return self._scaled(F.conv2d(z, self.B[:, :, None, None], groups=self.groups))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, rank={self.rank}, bias={self.bias is not None}")


class SPPaRAConv2d(ConvAdapter):
    """W'[:, :, c, c] = W[:, :, c, c] + P, with a full pointwise adapter P (out × in/groups)."""

    ROW_TENSORS, COL_TENSORS = ("P",), ("P",)

    def __init__(self, conv: nn.Conv2d, init_range: float = 1e-4) -> None:
        super().__init__(conv)
        self.P = nn.Parameter(torch.empty(self.out_channels, self.weight.shape[1], device=self.weight.device,
                                          dtype=self.weight.dtype))
        nn.init.uniform_(self.P, -init_range, init_range)

    @classmethod
    def from_module(cls, layer: nn.Conv2d, init_range: float = 1e-4, **_: Any) -> SPPaRAConv2d:
        return cls(layer, init_range=init_range)

    def delta(self) -> torch.Tensor:
        return self.P

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.P]

    def _train_fused(self) -> bool:
        # on a 1×1 conv, W + P is one weight-sized add and one conv, where the branch costs a second
        # full conv (measured: 1.37x the fine-tuning step on ResNet-50 with the branch everywhere)
        return self.kernel_size[0] == 1 or super()._train_fused()

    def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.P[:, :, None, None], groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, bias={self.bias is not None}")


# ----------------------------------------------------------------------------- depthwise convs
# A depthwise conv (in = out = groups, one input channel per filter) couples input channel j with
# filter j, so pruning removes both at once (spa.pruning.groups.DepthwiseAdapterPruner); the
# dependency graph finds its pruner by class, hence a class of its own. The maths is the parent's:
# ΔW = B·A with in / groups = 1, so A is rank × 1 and the update of filter j is B[j]·A.
class SPLoRADepthwiseConv2d(SPLoRAConv2d):
    """SPLoRA on a depthwise conv: as :class:`SPLoRAConv2d` (in / groups = 1)."""


class SPPaRADepthwiseConv2d(SPPaRAConv2d):
    """SPPaRA on a depthwise conv: P is out × 1 (one scale per channel at the centre tap)."""


@dataclass(frozen=True)
class LayerKind:
    """The layer classes of one channel-SPA kind: what stands in for a Linear (None: convs only), a
    conv and a depthwise conv, and whether it takes a rank."""
    linear: type[AdapterLayer] | None
    conv: type[ConvAdapter]
    depthwise: type[ConvAdapter]
    ranked: bool


# one entry per channel-SPA kind: a new layer-wise kind is one more line, not another branch
LAYER_KINDS: dict[str, LayerKind] = {
    "splora": LayerKind(SPLoRALinear, SPLoRAConv2d, SPLoRADepthwiseConv2d, ranked=True),
    "sppara": LayerKind(None, SPPaRAConv2d, SPPaRADepthwiseConv2d, ranked=False),
}


def layer_kind(kind: str) -> LayerKind:
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown channel SPA kind {kind!r}; known: {sorted(LAYER_KINDS)}")
    return LAYER_KINDS[kind]


def conv_adapter_class(kind: str, conv: nn.Conv2d) -> type[ConvAdapter]:
    """The adapter class for ``conv``: the depthwise variant where in = out = groups."""
    spec = layer_kind(kind)
    return spec.depthwise if is_depthwise(conv.groups, conv.in_channels, conv.out_channels) else spec.conv
