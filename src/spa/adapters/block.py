"""SPLoPA, the block SPA (docs/method.md §6): a low-rank PHM update built from prototypes that several
layers share.

For a matrix ``W`` (n × m) cut into blocks of p × q, with N prototypes of rank r:
``W' = W + Σ_i B_i ⊗ (C_i·R_i)``: ``B_i`` (n/p × m/q) are the layer's block-position weights,
``C_i`` (p × r) and ``R_i`` (r × q) the prototype factors, ⊗ the Kronecker product, so block (a, b)
of ΔW is ``Σ_i B_i[a, b]·C_i R_i``. Init as the authors': ``B`` and ``R`` kaiming-uniform,
``C ~ U(±init_range)``.

Prototypes are shared by every adapted layer of one (N, p, q, r) **within one model** (a
:class:`PrototypeBank` module that those layers reference; ``shared=False``: one bank per layer).
A shared tensor is stored and counted once (``spa.metrics.count_parameters`` counts by identity),
so learned parameters per layer are ``N·(n/p)·(m/q)`` plus, once per bank, ``N·r·(p + q)``.

Adapted: every ``nn.Linear`` (not the head, not a ViT's patch embedding) and every pointwise
(1 × 1, ungrouped) conv whose sizes the block divides; layers it does not divide are left frozen
and named in the log (EfficientNet-Lite0 has 24-, 40-, 80- and 112-channel layers). These layers are
pruned by blocks (``spa.pruning.blocks``: masks over the block positions), not by channels.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import AdapterLayer, ConvAdapter, LinearAdapter
from spa.adapters.convert import matches_any
from spa.utils import set_module

log = logging.getLogger(__name__)


class PrototypeBank(nn.Module):
    """N prototypes of rank r for p × q blocks: ``C`` (N × p × r) ~ U(±init_range), ``R`` (N × r × q)
    kaiming-uniform; ``prototypes()`` = C·R (N × p × q)."""

    def __init__(self, num: int, block: tuple[int, int], rank: int, init_range: float = 1e-4,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        p, q = block
        self.C = nn.Parameter(torch.empty(num, p, rank, device=device, dtype=dtype))
        self.R = nn.Parameter(torch.empty(num, rank, q, device=device, dtype=dtype))
        nn.init.uniform_(self.C, -init_range, init_range)
        for i in range(num):
            nn.init.kaiming_uniform_(self.R[i], a=math.sqrt(5))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, p, q, r): layers share a bank exactly when these agree."""
        return self.C.shape[0], self.C.shape[1], self.R.shape[2], self.C.shape[2]

    def prototypes(self) -> torch.Tensor:
        return self.C @ self.R


class SPLoPALayer(AdapterLayer):
    """ΔW = Σ_i B_i ⊗ P_i (P = the bank's prototypes), on a 2-D view (out × in) of the base weight."""

    bank: PrototypeBank
    B: nn.Parameter

    def _init_positions(self, out: int, inp: int, bank: PrototypeBank) -> None:
        num, p, q, _ = bank.shape
        if out % p or inp % q:
            raise ValueError(f"a {out} x {inp} weight is not divisible into {p} x {q} blocks")
        self.bank = bank
        self.B = nn.Parameter(torch.empty(num, out // p, inp // q, device=self.weight.device, dtype=self.weight.dtype))
        for i in range(num):
            nn.init.kaiming_uniform_(self.B[i], a=math.sqrt(5))

    def delta2d(self) -> torch.Tensor:
        """Σ_i B_i ⊗ P_i (out × in): element (a·p + i, b·q + j) = Σ_k B[k, a, b]·P[k, i, j]."""
        num, rows, cols = self.B.shape
        p, q = self.bank.shape[1:3]
        return torch.einsum("kab,kij->aibj", self.B, self.bank.prototypes()).reshape(rows * p, cols * q)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.B, self.bank.C, self.bank.R]

    def keep_rows(self, keep: list[int]) -> None:
        raise NotImplementedError("channel pruning of SPLoPA layers is not supported: they are pruned by "
                                  "blocks (pruning=block_movement or block_magnitude)")

    keep_cols = keep_rows


class SPLoPALinear(SPLoPALayer, LinearAdapter):
    """y = (W + Σ_i B_i ⊗ C_i R_i) x + b; ``to_module`` gives the plain Linear."""

    def __init__(self, layer: nn.Linear, bank: PrototypeBank) -> None:
        super().__init__(layer.weight, layer.bias)
        self._init_positions(*self.weight.shape, bank)

    def delta(self) -> torch.Tensor:
        return self.delta2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training materialises ΔW once per step (N·n·m multiply-adds, small next to a batch of tokens)
        weight = self.fused_weight() if self.training else self._eval_weight()
        return F.linear(x, weight, self.bias)


class SPLoPAConv2d(SPLoPALayer, ConvAdapter):
    """A pointwise (1 × 1, ungrouped) conv: its weight is an out × in matrix; ``to_module`` gives the
    plain conv."""

    def __init__(self, conv: nn.Conv2d, bank: PrototypeBank) -> None:
        if not is_pointwise(conv):
            raise ValueError(f"SPLoPA adapts pointwise convs only, got kernel {conv.kernel_size}, groups {conv.groups}")
        super().__init__(conv)
        self._init_positions(*self.weight.shape[:2], bank)

    def delta(self) -> torch.Tensor:
        return self.delta2d()           # out × in, placed at the (only) tap by ConvAdapter.fused_weight

    def _train_fused(self) -> bool:
        return True                     # one conv with W + ΔW (ΔW is materialised either way)


def is_pointwise(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1 \
        and module.padding_mode == "zeros"


def convert_splopa(model: nn.Module, skip: Sequence[str], num_prototypes: int = 64,
                   block_shape: Sequence[int] = (32, 32), prototype_rank: int = 2, shared: bool = True,
                   init_range: float = 1e-4) -> list[str]:
    """Replace every eligible Linear / pointwise conv of ``model`` (not under ``skip``) in place;
    layers the block does not divide are left frozen and logged. Returns the adapted names."""
    p, q = (int(v) for v in block_shape)
    if num_prototypes < 1 or prototype_rank < 1 or p < 1 or q < 1:
        raise ValueError(f"SPLoPA needs num_prototypes, prototype_rank and block_shape >= 1, got {num_prototypes}, "
                         f"{prototype_rank}, {tuple(block_shape)}")
    planned, undivided = [], []
    for name, module in model.named_modules():
        if not name or matches_any(name, skip):
            continue
        if type(module) is nn.Linear or is_pointwise(module):
            out, inp = module.weight.shape[:2]
            (planned if out % p == 0 and inp % q == 0 else undivided).append((name, module))
    if undivided:
        log.warning("SPLoPA: %d layers not divisible into %d x %d blocks are left frozen: %s", len(undivided), p, q,
                    [f"{n} ({m.weight.shape[0]} x {m.weight.shape[1]})" for n, m in undivided[:6]])
    if not planned:
        sizes = sorted({int(s) for _, m in undivided for s in m.weight.shape[:2]})
        common = [d for d in (8, 16, 32, 64) if all(s % d == 0 for s in sizes)]
        raise ValueError(f"SPLoPA with {p} x {q} blocks found no layer it divides (sizes {sizes[:8]}); block sizes "
                         f"that divide them all: {common or 'none of 8, 16, 32, 64'} "
                         f"(adapter.options.block_shape=[{(common or [8])[-1]},{(common or [8])[-1]}])")
    banks: dict[tuple, PrototypeBank] = {}
    for name, module in planned:
        w = module.weight
        if shared:
            bank = banks.setdefault((w.device, w.dtype), PrototypeBank(num_prototypes, (p, q), prototype_rank,
                                                                        init_range, w.device, w.dtype))
        else:
            bank = PrototypeBank(num_prototypes, (p, q), prototype_rank, init_range, w.device, w.dtype)
        set_module(model, name, SPLoPALinear(module, bank) if isinstance(module, nn.Linear)
                    else SPLoPAConv2d(module, bank))
    return [name for name, _ in planned]
