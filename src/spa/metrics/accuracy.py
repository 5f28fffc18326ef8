"""Top-k accuracy."""
from __future__ import annotations

import torch


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Per k, the number of samples whose target is among the top-k logits (k capped at #classes),
    as a tensor on the logits' device (no host sync, so it can be accumulated per batch)."""
    kmax = min(max(ks), logits.shape[1])
    hits = logits.topk(kmax, dim=1).indices.eq(targets.view(-1, 1))
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """:func:`topk_hits` as Python ints."""
    return [int(v) for v in topk_hits(logits, targets, ks).tolist()]
