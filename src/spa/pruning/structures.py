"""Pruning structures: what a pruning step removes, and the unit the schedule counts.

A structure gives a model's groups (coupled units that go together), how to remove units of a
group, and the name of the unit its density counts. The session asks the registry which structure
fits a model instead of branching on the model's kind, so a new structure (``blocks`` of a block
SPA, whole ``adapters`` for Pear) is one more entry here:

- ``channels`` (CNNs): channel groups of the traced dependency graph (Torch-Pruning); the unit is a
  producer filter (a conv's output channel), density = kept / original filters;
- ``heads_mlp`` (timm ViT / DeiT): attention heads and MLP hidden channels per block; the unit is a
  producer row (a head counts its 3·head_dim rows of ``qkv``), so density is counted alike;
- ``mlp`` (other token-mixing timm models: Swin, LeViT, MobileViT, PVT, MLP-Mixer, ...): the hidden
  channels of their MLP blocks only (:mod:`spa.pruning.mlp`); the unit is an ``fc1`` row.

A structure may leave layers unpruned (``left_out``: the mlp structure's attention and convolutions);
the session logs them and counts them in its records.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from spa.pruning import mlp
from spa.pruning.groups import ChannelGroup, build_graph, channel_groups, prune_group
from spa.pruning.transformer import is_transformer, prune_transformer_group, transformer_groups


@dataclass(frozen=True)
class Structure:
    name: str
    unit: str                                                           # what density counts
    fits: Callable[[nn.Module], bool]
    context: Callable[[nn.Module, torch.Tensor], Any]                   # built once per session (a graph)
    groups: Callable[[nn.Module, Any], list[ChannelGroup]]
    remove: Callable[[nn.Module, Any, ChannelGroup, Sequence[int]], None]
    left_out: Callable[[nn.Module], list[str]] = lambda model: []     # layers it never prunes


STRUCTURES: dict[str, Structure] = {}


def register_structure(structure: Structure) -> Structure:
    if structure.name in STRUCTURES:
        raise ValueError(f"pruning structure {structure.name!r} registered twice")
    STRUCTURES[structure.name] = structure
    return structure


# order matters: the first structure that fits a model is its structure
register_structure(Structure(
    "heads_mlp", "filters", is_transformer, lambda model, example: None,
    lambda model, _: transformer_groups(model),
    lambda model, _, group, idxs: prune_transformer_group(model, group, idxs)))
register_structure(Structure(
    "mlp", "filters", mlp.fits, lambda model, example: None, lambda model, _: mlp.mlp_groups(model),
    lambda model, _, group, idxs: mlp.prune_mlp_group(model, group, idxs), mlp.left_out))
register_structure(Structure(
    "channels", "filters", lambda model: True, build_graph, channel_groups,
    lambda model, graph, group, idxs: prune_group(model, graph, group.root, idxs)))


def structure_for(model: nn.Module) -> Structure:
    """The registered structure that fits ``model``."""
    return next(s for s in STRUCTURES.values() if s.fits(model))
