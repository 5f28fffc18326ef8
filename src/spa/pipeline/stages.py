"""The stage chain of a run, plain config logic: the runs it starts from (each method says which),
and the epochs of its initial training. ``spa.reporting.cost`` prices a grid with these."""
from __future__ import annotations

from omegaconf import DictConfig

from spa.pipeline.configs import base_config
from spa.pipeline.methods import method_of

__all__ = ["base_config", "initial_epochs", "start_chain", "start_config"]


def start_config(cfg: DictConfig) -> DictConfig | None:
    """The run this run starts from, or None (it trains from its weights): a pruned run starts from
    the unpruned run of the same (dataset, learner, seed), trained once and shared by every criterion;
    a Pear run from its warm-up run (see each method's ``start_config``)."""
    return method_of(cfg).start_config(cfg)


def start_chain(cfg: DictConfig) -> list[DictConfig]:
    """The configs of the runs :func:`start_config` chains before ``cfg``, the first first."""
    chain, start = [], start_config(cfg)
    while start is not None:
        chain.insert(0, start)
        start = start_config(start)
    return chain


def initial_epochs(cfg: DictConfig) -> int:
    """Epochs of the initial (unpruned) training: ``train.epochs_by_adapter[kind]`` or ``train.epochs``
    (Pear: its warm-up, ``pruning.prune_at_epoch``)."""
    return method_of(cfg).initial_epochs(cfg)
