"""The base of every adapter layer: a frozen weight W plus a learned update ΔW that trains in its
cheaper form and fuses into a plain layer (docs/method.md §1). :class:`AdapterLayer` holds what all
kinds share (the frozen base, the fused-weight cache, row and column pruning, parameter counts);
:class:`LinearAdapter` and :class:`ConvAdapter` what a Linear and a Conv2d add. The kinds are in
``spa.adapters.layers`` (SPLoRA, SPPaRA) and ``spa.adapters.block`` (SPLoPA)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same


def resolve_rank(rank: int | float, out_features: int) -> int:
    """An int rank, or a float in (0, 1) meaning that fraction of the output features (at least 1)."""
    if isinstance(rank, float) and not rank.is_integer():
        if not 0 < rank < 1:
            raise ValueError(f"adapter rank {rank} must be a positive int or a fraction in (0, 1)")
        return max(1, round(rank * out_features))
    if int(rank) < 1:
        raise ValueError(f"adapter rank must be >= 1, got {rank}")
    return int(rank)


class _FusedCache:
    """The fused weight of an adapter layer in eval mode, keyed by the parameters' identity and version."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.weight: torch.Tensor | None = None

    def get(self, params: list[torch.Tensor], compute) -> torch.Tensor:
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        if key != self.key:
            with torch.no_grad():
                self.weight = compute()
            self.key = key
        return self.weight

    def clear(self) -> None:
        self.key, self.weight = None, None


def expand_blocks(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A mask over blocks (rows × cols) expanded to its elements: each entry repeated over a
    ``block`` = p × q tile, (rows·p) × (cols·q)."""
    p, q = block
    return mask.repeat_interleave(p, 0).repeat_interleave(q, 1)


def _select(param: torch.Tensor, keep: list[int], dim: int, trainable: bool) -> nn.Parameter:
    index = torch.tensor(keep, device=param.device, dtype=torch.long)
    return nn.Parameter(param.detach().index_select(dim, index).contiguous(), requires_grad=trainable)


# buffers of a folded, frozen low-rank update R_B·R_A (Pear's knowledge checkpoint): out × r and r × in
RESIDUAL = ("pear_residual_B", "pear_residual_A")


class AdapterLayer(nn.Module):
    """Common behaviour: frozen base ``weight``, trainable ``bias``, fused-weight cache in eval, and
    structured pruning of its own rows and columns (``keep_rows`` / ``keep_cols``): each kind names
    the adapter tensors indexed by output rows and by input columns, so a pruner needs no knowledge
    of a kind's attributes."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    ROW_TENSORS: tuple[str, ...] = ()      # adapter tensors whose dim 0 follows the output rows
    COL_TENSORS: tuple[str, ...] = ()      # adapter tensors whose dim 1 follows the input columns (per group)

    def __init__(self) -> None:
        super().__init__()
        self._cache = _FusedCache()

    def delta(self) -> torch.Tensor:
        """ΔW in the base weight's shape."""
        raise NotImplementedError

    def adapter_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def fused_weight(self) -> torch.Tensor:
        return self._masked(self.weight + self.delta())

    def _masked(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the pruned blocks zeroed, when block pruning gave this layer a
        ``block_mask`` (``spa.pruning.blocks``; one entry per p × q block of the out × in matrix).
        In training, ``_block_grad`` (set by the block pruner) sees the unmasked weight and the
        gradient of the masked one, from which movement scores are accumulated."""
        mask = self._buffers.get("block_mask")
        if mask is None:
            return weight
        full = expand_blocks(mask, self.block_shape) > 0
        # where, not a product: a pruned block is exactly zero whatever the weight holds (inf, NaN)
        masked = torch.where(full.view(*full.shape, *(1,) * (weight.dim() - 2)), weight, weight.new_zeros(()))
        hook = getattr(self, "_block_grad", None)
        if hook is not None and masked.requires_grad:
            unmasked = weight.detach()
            masked.register_hook(lambda grad: hook(self, unmasked, grad))
        return masked

    def _eval_weight(self) -> torch.Tensor:
        """The fused weight: cached when no gradient can flow to the adapters (inference), else
        computed differentiably (an eval-mode pass under autograd still trains the adapters)."""
        adapters = self.adapter_parameters()
        if torch.is_grad_enabled() and any(p.requires_grad for p in adapters):
            return self.fused_weight()
        extra = [b for b in (self._buffers.get(n) for n in ("block_mask", *RESIDUAL)) if b is not None]
        return self._cache.get([self.weight, *adapters, *extra], self.fused_weight)

    def residual(self) -> torch.Tensor | None:
        """The folded update R_B·R_A of a pruned Pear adapter (its knowledge checkpoint,
        ``spa.adapters.pear``) in ΔW's shape, or None where the layer holds none."""
        b, a = (self._buffers.get(n) for n in RESIDUAL)
        return None if b is None else b @ a

    def _frozen(self) -> torch.Tensor:
        """The frozen part of the weight: W, plus the folded residual where the layer holds one."""
        residual = self.residual()
        return self.weight if residual is None else self.weight + self._place(residual)

    def _place(self, update: torch.Tensor) -> torch.Tensor:
        """An update in ΔW's shape placed in the weight's shape (a conv: at the centre tap)."""
        return update

    def train(self, mode: bool = True):
        if mode:
            self._cache.clear()  # dropped on train(); recomputed at the first eval forward
        return super().train(mode)

    def keep_rows(self, keep: list[int]) -> None:
        """Keep output rows ``keep`` of W (frozen), of the bias and of the :attr:`ROW_TENSORS`."""
        self.weight = _select(self.weight, keep, 0, trainable=False)
        if self.bias is not None:
            self.bias = _select(self.bias, keep, 0, trainable=self.bias.requires_grad)
        for name in self.ROW_TENSORS:
            setattr(self, name, _select(getattr(self, name), keep, 0, trainable=True))
        self._cache.clear()

    def keep_cols(self, keep: list[int]) -> None:
        """Keep input columns ``keep`` of W (frozen) and of the :attr:`COL_TENSORS`."""
        self.weight = _select(self.weight, keep, 1, trainable=False)
        for name in self.COL_TENSORS:
            setattr(self, name, _select(getattr(self, name), keep, 1, trainable=True))
        self._cache.clear()

    def learned_parameters(self) -> int:
        """Per-task learned parameters of this layer alone: adapter terms (+ bias). A tensor shared with
        another layer counts in each; ``spa.metrics.count_parameters`` counts a model by identity."""
        return sum(p.numel() for p in self.adapter_parameters()) + (self.bias.numel() if self.bias is not None else 0)

    def _init_base(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        # the frozen base shares the source layer's storage: converting a model copies no weights
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None


# The training form of a SPLoRA conv. The branch B(Ax) avoids the frozen conv's weight gradient
# (in·out·k² multiply-adds per output position) but costs its own: about BRANCH_MACS·r·(in + out) for
# the two thin convs forward and backward, plus BRANCH_TRAFFIC·out for the branch output and its
# addition (memory-bound, and large at the high resolutions of a CNN's first stages). Where that is
# more, the conv trains through W + BA: one product B·A per step (out × in, small next to the
# activations) and one conv. Constants fitted to the per-shape comparison of `make bench` (layers
# section) on CPU; both forms compute the same function. Linear layers (ViT tokens) always take the
# branch: measured faster or equal there at ranks 8 and 32.
BRANCH_MACS, BRANCH_TRAFFIC = 5, 200


def branch_is_cheaper(rank: int, in_per_group: int, out: int, kernel_area: int = 1) -> bool:
    """Whether the low-rank branch costs less than the weight gradient it avoids (comment above)."""
    return BRANCH_MACS * rank * (in_per_group + out) + BRANCH_TRAFFIC * out < in_per_group * out * kernel_area


# ----------------------------------------------------------------------------- Linear
class LinearAdapter(AdapterLayer):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self._init_base(weight, bias)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def to_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W + ΔW folded in."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.fused_weight())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer


# ----------------------------------------------------------------------------- Conv2d
# Conv2d classes an adapter can stand in for: the class -> whether it pads its input dynamically
# ("same" padding of TensorFlow, timm's Conv2dSame: pad_same(x) then a conv with padding 0). Any
# other subclass changes what the conv computes (weight standardisation, ...) and is refused by name.
CONV_CLASSES: dict[type, bool] = {nn.Conv2d: False, Conv2dSame: True}


def is_depthwise(groups: int, in_channels: int, out_channels: int) -> bool:
    return groups > 1 and in_channels == out_channels == groups


class ConvAdapter(AdapterLayer):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        if type(conv) not in CONV_CLASSES:
            raise TypeError(f"channel SPAs adapt {[c.__name__ for c in CONV_CLASSES]}, not {type(conv).__name__}")
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"channel SPAs need an odd square kernel, got {conv.kernel_size}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"channel SPAs support padding_mode='zeros' only, got {conv.padding_mode!r}")
        self._init_base(conv.weight, conv.bias)
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = conv.padding
        self.same_padding = CONV_CLASSES[type(conv)]   # TF "same": the input is padded in forward

    @property
    def depthwise(self) -> bool:
        """One input and one output channel per group (in = out = groups): channel j couples input j and filter j."""
        return is_depthwise(self.groups, self.in_channels, self.out_channels)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def _center(self, pointwise: torch.Tensor) -> torch.Tensor:
        """A (out × in/groups) matrix placed at the centre tap of a zero k×k kernel."""
        k = self.kernel_size[0]
        return F.pad(pointwise[:, :, None, None], (k // 2, k // 2, k // 2, k // 2))

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _centre_input(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """The input pixels the centre tap reads, so a strided 1×1 conv on them aligns with the k×k conv."""
        if isinstance(self.padding, str):
            raise ValueError("string padding is handled by the dense path")
        k = self.kernel_size[0]
        offsets = [self.dilation[i] * (k // 2) - self.padding[i] for i in range(2)]
        if min(offsets) < 0:
            pad = [max(0, -offsets[1])] * 2 + [max(0, -offsets[0])] * 2
            x = F.pad(x, pad)
            offsets = [max(0, o) for o in offsets]
        x = x[:, :, offsets[0]:, offsets[1]:]
        h, w = out_hw
        return x[:, :, : (h - 1) * self.stride[0] + 1: self.stride[0], : (w - 1) * self.stride[1] + 1: self.stride[1]]

    def _pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """Adapter branch on the centre-aligned input (low-memory form)."""
        raise NotImplementedError

    def _train_fused(self) -> bool:
        """Train through the fused weight (one conv) instead of the parallel branch: where that is
        cheaper and materialises no product (SPPaRA on a 1×1 conv: W + P), or string padding."""
        return isinstance(self.padding, str)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:     # as Conv2dSame: pad to TF "same", then the conv's own padding is 0
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        if not self.training:
            return self._conv(x, self._eval_weight())
        if self._train_fused():
            return self._conv(x, self.fused_weight())
        y = self._conv(x, self._frozen())
        return y.add_(self._pointwise(self._centre_input(x, y.shape[-2:])))

    def fused_weight(self) -> torch.Tensor:
        return self._masked(self.weight + self._center(self.delta()))

    def _place(self, update: torch.Tensor) -> torch.Tensor:
        return self._center(update)

    def to_module(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` (``Conv2dSame`` for TF "same" padding) with W + ΔW folded in."""
        cls = Conv2dSame if self.same_padding else nn.Conv2d
        conv = cls(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                   self.dilation, self.groups, bias=self.bias is not None,
                   device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.fused_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv
