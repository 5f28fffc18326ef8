"""torchvision's ViT weights on timm's ViT (``backbone.torchvision_weights``).

The ICLR version of the paper ran torchvision's ``vit_b_16`` with its ImageNet weights; timm has no
tag for those, so they are downloaded by torchvision (once, into torch's hub cache) and renamed onto
``timm``'s ``vit_base_patch16_224``, which computes the same function: a class token, learned
position embeddings over 1 + 196 tokens, pre-norm blocks (LayerNorm ε = 1e-6, exact GELU), the
packed q/k/v projection (``in_proj`` = timm's ``qkv``, rows in q, k, v order) and a final norm on
the class token. The classifier is never taken over: runs get a new head for their classes.
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# torchvision name -> timm name; {i} is the block index. MLPBlock's keys were linear_1 / linear_2 in
# older torchvision files and 0 / 3 (an nn.Sequential) since 0.14: both are read.
_RENAMES = (
    (r"conv_proj\.", "patch_embed.proj."),
    (r"class_token", "cls_token"),
    (r"encoder\.pos_embedding", "pos_embed"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_weight", r"blocks.\1.attn.qkv.weight"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_bias", r"blocks.\1.attn.qkv.bias"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
    (r"encoder\.ln\.", "norm."),
    (r"heads\.head\.", "head."),
)


def timm_key(name: str) -> str:
    """The timm ``VisionTransformer`` key of torchvision ``VisionTransformer`` key ``name``."""
    for pattern, replacement in _RENAMES:
        new, count = re.subn(f"^{pattern}", replacement, name)
        if count:
            return new
    raise KeyError(f"torchvision ViT key {name!r} has no timm counterpart (a torchvision ViT with a "
                   f"representation layer or another layout?)")


def timm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ViT state dict with timm's key names (same tensors)."""
    return {timm_key(k): v for k, v in state.items()}


def check_torchvision_weights(spec: str):
    """The torchvision weights enum ``spec`` names (nothing is downloaded); ValueError naming the fix."""
    from torchvision.models import get_weight
    try:
        return get_weight(spec)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"backbone.torchvision_weights={spec!r} is not a torchvision weights enum; use e.g. "
                         f"ViT_B_16_Weights.IMAGENET1K_V1") from err


def load_torchvision_vit(model: nn.Module, spec: str) -> str:
    """Download (or read from torch's hub cache) torchvision's weights ``spec`` (e.g.
    ``ViT_B_16_Weights.IMAGENET1K_V1``) and load them into the timm ViT ``model``, its head left as
    it is. Every other tensor must fit. Returns the weights' file URL."""
    weights = check_torchvision_weights(spec)
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as err:  # offline, HTTP errors
        raise RuntimeError(
            f"could not fetch torchvision's {spec} ({type(err).__name__}: {err}). Fix one of: connect to the "
            f"internet once (torch caches the file under $TORCH_HOME/hub/checkpoints), set backbone.weights=PATH "
            f"to a model.pt saved by one of our runs, or backbone.torchvision_weights=null for timm's weights."
        ) from err
    load_timm_state(model, timm_state(state), spec)
    return weights.url


def load_timm_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load renamed torchvision tensors into ``model`` without its head; refuse what does not fit."""
    from spa.models.heads import classifier_keys
    head = set(classifier_keys(model))
    state = {k: v for k, v in state.items() if k not in head}
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ValueError(f"torchvision's {source} does not fit {type(model).__name__} as configured: shape "
                         f"mismatch {mismatched[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]}. Use "
                         f"backbone=vit_base_patch16_224 with the torchvision ViT-B/16 weights.")
    model.load_state_dict(state, strict=False)
    log.info("loaded torchvision's %s into timm's layout (%d tensors; head new)", source, len(state))
