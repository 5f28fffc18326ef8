"""Structured pruning of timm ViT / DeiT blocks: MLP hidden channels and whole attention heads.

The couplings inside a transformer block are local (the residual width is not pruned), so the
groups are built directly from timm's module layout rather than traced:
- MLP group of block i: row j of ``mlp.fc1`` (its "filter") with column j of ``mlp.fc2``;
- head group of block i: head h = rows ``s·attn_dim + h·head_dim + [0, head_dim)`` of ``attn.qkv``
  for s in (q, k, v) (3·head_dim filters) with the matching ``head_dim`` columns of ``attn.proj``;
  afterwards timm's ``num_heads`` and ``attn_dim`` are set to the new width.
The row/column removal uses the same pruning functions as the CNN path (Torch-Pruning's Linear
pruner, ours for adapter layers), so adapters lose the matching rows of ``B`` and columns of ``A``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from spa.pruning.groups import ChannelGroup, prune_cols, prune_rows


def is_transformer(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return isinstance(blocks, nn.Sequential) and len(blocks) > 0 and hasattr(blocks[0], "attn") \
        and hasattr(blocks[0].attn, "qkv") and hasattr(blocks[0], "mlp")


def transformer_groups(model: nn.Module) -> list[ChannelGroup]:
    groups = []
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            raise NotImplementedError("head pruning of attention with scale_norm is not supported")
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError("head pruning of gated attention is not supported")
        groups.append(ChannelGroup(root=f"blocks.{i}.attn.qkv", producers=[f"blocks.{i}.attn.qkv"],
                                   size=attn.num_heads, kind="heads", unit=attn.head_dim))
        groups.append(ChannelGroup(root=f"blocks.{i}.mlp.fc1", producers=[f"blocks.{i}.mlp.fc1"],
                                   size=mlp.fc1.weight.shape[0]))
    return groups


def prune_transformer_group(model: nn.Module, group: ChannelGroup, idxs: Sequence[int]) -> None:
    """Remove heads (head group) or hidden channels (MLP group) ``idxs`` of one block."""
    block = model.get_submodule(group.root.rsplit(".", 2)[0])
    if group.kind == "heads":
        attn, hd = block.attn, block.attn.head_dim
        dim = attn.num_heads * hd
        cols = [h * hd + j for h in idxs for j in range(hd)]
        prune_rows(attn.qkv, [s * dim + c for s in range(3) for c in cols])
        prune_cols(attn.proj, cols)
        attn.num_heads -= len(idxs)
        attn.attn_dim = attn.num_heads * hd
    else:
        prune_rows(block.mlp.fc1, idxs)
        prune_cols(block.mlp.fc2, idxs)
