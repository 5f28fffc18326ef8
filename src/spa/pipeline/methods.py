"""The registry of pruning methods: a config's ``pruning.structure`` names its method (configs), the
method's module holds everything about it. Adding a method: one module with a ``METHOD`` and one
line here."""
from __future__ import annotations

from omegaconf import DictConfig

from spa.pipeline import blocks, channels, pear
from spa.pipeline.configs import method_name
from spa.pipeline.method import Method

METHODS: dict[str, Method] = {m.name: m for m in (channels.METHOD, blocks.METHOD, pear.METHOD)}


def method_of(cfg: DictConfig) -> Method:
    """The :class:`Method` that runs ``cfg``."""
    return METHODS[method_name(cfg)]
