"""What a pruned network looks like, unit by unit: the width every prunable unit keeps after a step.

A unit is a channel group of a CNN (its root module names it), a ViT block's attention heads or MLP
hidden channels, or a block-pruned matrix (its p × q blocks). Pruned runs record the widths of every
step in ``widths.csv`` (``spa.records.RunDir.write_widths``) and the narrowest unit in ``steps.csv``,
so a layer emptied by a global ranking is seen, not inferred from a fall in accuracy.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

KINDS = ("channels", "heads", "mlp", "blocks")
COLUMNS = ["step", "density", "unit", "kind", "original", "kept"]


def session_widths(session) -> list[dict[str, Any]]:
    """The units of a channel pruning session (:class:`spa.pruning.session.PruningSession`) in network
    order: ``unit`` (the root module of the group on the unpruned model), ``kind``, ``original`` (its width
    before pruning) and ``kept``. A unit keeps its name when a re-traced group comes out with another root
    or in parts (Torch-Pruning stops coupling a depthwise conv left with one channel to the conv before
    it): the parts are matched through their producers and a unit keeps the widest part's width."""
    transformer = session.structure.name in ("heads_mlp", "mlp")
    units: dict[str, dict[str, Any]] = {}
    for g in session.groups:
        unit = session.original_unit(g)
        kind = g.kind if g.kind != "channels" or not transformer else "mlp"
        entry = units.setdefault(unit, {"unit": unit, "kind": kind, "original": int(session.original_sizes[unit]),
                                        "kept": 0})
        entry["kept"] = max(entry["kept"], int(g.size))
    order = {root: i for i, root in enumerate(session.original_sizes)}
    return sorted(units.values(), key=lambda w: order[w["unit"]])


def block_widths(layers: dict[str, nn.Module]) -> list[dict[str, Any]]:
    """The block-pruned matrices (``spa.pruning.blocks.block_layers``): blocks of each, before and kept."""
    return [{"unit": name, "kind": "blocks", "original": int(layer.block_mask.numel() * layer.block_units),
             "kept": int(layer.block_mask.sum().item() * layer.block_units)} for name, layer in layers.items()]


def narrowest(widths: list[dict[str, Any]]) -> tuple[str | None, float | None]:
    """The unit that keeps the smallest fraction of its original width (the first in network order on
    a tie) and that fraction, rounded to 6 digits; (None, None) without units."""
    if not widths:
        return None, None
    unit = min(widths, key=lambda w: w["kept"] / w["original"])
    return unit["unit"], round(unit["kept"] / unit["original"], 6)
