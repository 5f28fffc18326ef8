"""Adapters: how a task learns on top of a shared backbone.

Every adapter kind registers a function ``apply(model, **options) -> model`` that converts layers
in place and sets ``requires_grad`` to the kind's trainable set. The pipeline looks kinds up by
``adapter.kind``; a layer-wise adapter (SPLoRA, SPPaRA), a block adapter (SPLoPA) or an
adapter-sharing method (Pear) is one more registered function, not a change to the pipeline.
"""
from spa.adapters.registry import ADAPTERS, apply_adapter, register_adapter

__all__ = ["ADAPTERS", "apply_adapter", "register_adapter"]
