"""Block-sparse layers on DeiT-S's Linear shapes: dense, BSR and CSR products by block density,
and SPLoPA's training forward materialised against factored."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import expand_blocks
from spa.bench.nets import SEED
from spa.pruning.sparse import block_sparse_weight, form_timings
from spa.utils import timed

# DeiT-S's Linear layers (out × in): attention qkv and proj, MLP fc1 and fc2 (embed 384, MLP 1536)
DEIT_S_LINEARS = (("qkv", 1152, 384), ("proj", 384, 384), ("fc1", 1536, 384), ("fc2", 384, 1536))
DEIT_S_TOKENS = 197                  # tokens per image: 14 × 14 patches and the class token
BLOCK_DENSITIES = (0.7, 0.5, 0.3, 0.1)


def block_sparse_inference(tokens: int, device: torch.device, repeats: int = 5, warmup: int = 1,
                           shapes=DEIT_S_LINEARS, densities=BLOCK_DENSITIES, block: tuple[int, int] = (32, 32),
                           seed: int = SEED) -> list[dict[str, Any]]:
    """Per (layer shape, block density): :func:`form_timings` of a :func:`block_sparse_weight` on
    ``tokens`` seeded random float32 tokens, with the speed-ups dense / BSR and dense / CSR (> 1:
    faster than dense). ``shapes``: (name, out, in) triples."""
    rows = []
    for name, out, inp in shapes:
        x = torch.randn(tokens, inp, generator=torch.Generator().manual_seed(seed)).to(device)
        for density in densities:
            weight, mask = block_sparse_weight(out, inp, block, density, seed)
            row = {"layer": name, "weight_shape": f"{out}x{inp}", "tokens": tokens, "block": "x".join(map(str, block)),
                   "density": density, "blocks": mask.numel(), "kept_blocks": int(mask.sum()),
                   **form_timings(weight, block, x, repeats, warmup)}
            for layout in ("bsr", "csr"):
                s = row[f"{layout}_s"]
                row[f"dense_over_{layout}"] = None if s is None else row["dense_s"] / s
            rows.append(row)
    return rows


def splopa_factored_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a training-mode :class:`~spa.adapters.block.SPLoPALinear`, ``x (W + ΔW)^T + b``
    with ``ΔW = Σ_i B_i ⊗ C_i R_i``, without materialising ΔW: with ``x`` (T × m) viewed as T × m/q × q,
    ``Z = x_b R^T`` (T × N × m/q × r), ``U = Σ_b B Z`` (T × N × n/p × r), ``out = Σ_k U C^T`` (T × n/p × p),
    i.e. T·N·r·(m + n) + T·N·(n/p)·(m/q)·r multiply-adds in place of N·n·m for ΔW (independent of
    T). Leading dims of ``x`` are kept. With a ``block_mask`` (block pruning; its blocks, the layer's
    ``block_shape``, are multiples of the prototypes' p × q) the masked blocks are dropped from W and
    ΔW alike (B masked per block position); the block pruner's gradient hook is not fed (that needs
    the materialised weight)."""
    num, rows, cols = layer.B.shape
    p, q = layer.bank.shape[1:3]
    lead = x.shape[:-1]
    xb = x.reshape(-1, cols, q)
    weight, positions = layer.weight, layer.B
    mask = layer._buffers.get("block_mask")
    if mask is not None:
        mp, mq = layer.block_shape
        positions = positions * expand_blocks(mask, (mp // p, mq // q)).to(positions.dtype)
        weight = weight * expand_blocks(mask, (mp, mq)).to(weight.dtype)
    z = torch.einsum("tbj,krj->tkbr", xb, layer.bank.R)
    u = torch.einsum("tkbr,kab->tkar", z, positions)
    out = torch.einsum("tkar,kir->tai", u, layer.bank.C).reshape(*lead, rows * p)
    return F.linear(x, weight, layer.bias) + out


def splopa_layer(out: int, inp: int, prototypes: int, rank: int = 2, block: tuple[int, int] = (32, 32),
                 device: torch.device | None = None, seed: int = SEED) -> nn.Module:
    """A seeded training-mode SPLoPALinear on an ``out × in`` Linear with its own bank of
    ``prototypes`` prototypes: base weight frozen, B, C and R trainable."""
    from spa.adapters.block import PrototypeBank, SPLoPALinear

    torch.manual_seed(seed)
    bank = PrototypeBank(prototypes, tuple(block), rank)
    return SPLoPALinear(nn.Linear(inp, out), bank).to(device).train()


def splopa_training_forms(tokens: int, device: torch.device, repeats: int = 5, warmup: int = 1,
                          shapes=DEIT_S_LINEARS, prototypes=(64, 128), rank: int = 2,
                          block: tuple[int, int] = (32, 32), seed: int = SEED) -> list[dict[str, Any]]:
    """Per (layer shape, prototype count): one training step of a :func:`splopa_layer` (forward and
    backward of the outputs' sum, gradients set to None first; the input requires grad, as inside
    a network) in the layer's own form (ΔW materialised once, then ``F.linear``) and in
    :func:`splopa_factored_forward`, timed interleaved after checking that the two outputs agree;
    with the ratio factored / materialised (> 1: factored is slower)."""
    rows = []
    for name, out, inp in shapes:
        x = torch.randn(tokens, inp, generator=torch.Generator().manual_seed(seed)).to(device).requires_grad_(True)
        for num in prototypes:
            layer = splopa_layer(out, inp, num, rank, block, device, seed)
            with torch.no_grad():
                torch.testing.assert_close(splopa_factored_forward(layer, x), layer(x), rtol=1e-3, atol=1e-3)

            def step(forward, layer=layer):
                def run():
                    layer.zero_grad(set_to_none=True)
                    x.grad = None                     # noqa: B023 (timed below, in this iteration)
                    forward(x).sum().backward()       # noqa: B023
                return run
            seconds = timed({"materialised": step(layer),
                             "factored": step(lambda v, layer=layer: splopa_factored_forward(layer, v))},
                            device, repeats, warmup)
            rows.append({"layer": name, "weight_shape": f"{out}x{inp}", "tokens": tokens, "prototypes": num,
                         "rank": rank, "block": "x".join(map(str, block)),
                         "materialised_s": seconds["materialised"], "factored_s": seconds["factored"],
                         "factored_over_materialised": seconds["factored"] / seconds["materialised"]})
    return rows
