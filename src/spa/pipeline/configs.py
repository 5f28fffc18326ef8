"""Plain config logic, no torch: the fixed learner and pruning sections a stage swaps in, the
defaults of optional keys (read with :func:`setting`), the method a config names, and the configs
of the stages a run derives from its own (its base stage, its unpruned start)."""
from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from spa import config_dir
from spa.records import NEUTRAL_DEFAULTS

FINETUNE = {"name": "finetune", "kind": "finetune", "prunable": True, "options": {}}
NO_PRUNING = {"name": "none"}
BASE_WEIGHTS = "base"   # backbone.weights value of a run whose weights come from its base stage


# the value an optional key has where a config leaves it out: the record's neutral values (a key at its
# neutral value does not enter the config hash) and the rest of what the pipeline reads with a default
DEFAULTS: dict[str, Any] = {**NEUTRAL_DEFAULTS, "overwrite": False, "report": False, "logger.name": "none",
                            "backbone.head_init": "timm", "backbone.packaged_weights": None,
                            "adapter.prunable": True, "schedule.reuse_unpruned": True,
                            "pruning.criterion": None, "pruning.structure": None, "pruning.after": None,
                            "pruning.initial_warmup": 0, "pruning.final_warmup": 0, "pruning.block_shape": None,
                            "pruning.score_lr": None, "pruning.l1": 1.0, "pruning.blend_weight": None,
                            "adapter.options.exclude": None, "adapter.options.block_shape": None,
                            "train.epochs_by_adapter": {}}


def setting(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key``, or its default from :data:`DEFAULTS` where the config
    leaves it out (a key with no default there is a bug: KeyError)."""
    value = OmegaConf.select(cfg, key, default=copy.deepcopy(DEFAULTS[key]))
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# pruning.structure -> the name of the method that runs it (spa.pipeline.methods); anything else: channels
STRUCTURE_METHODS = {"blocks": "blocks", "adapters": "pear"}


def method_name(cfg: DictConfig) -> str:
    """The name of the method that runs ``cfg``: ``blocks`` for a block-pruning config, ``pear`` for
    Pear's, else ``iterative`` (channel pruning, or none)."""
    return STRUCTURE_METHODS.get(setting(cfg, "pruning.structure"), "iterative")


def training_epochs(cfg: DictConfig) -> int:
    """Epochs of a learner's initial (unpruned) training: ``train.epochs_by_adapter[kind]`` or
    ``train.epochs``. (A method may start otherwise: :func:`spa.pipeline.stages.initial_epochs`.)"""
    return int(setting(cfg, "train.epochs_by_adapter").get(cfg.adapter.kind, cfg.train.epochs))


def base_config(cfg: DictConfig) -> DictConfig:
    """The pretraining stage of ``cfg``: ``cfg`` with ``cfg.base`` merged in, fine-tuning, no pruning."""
    main = OmegaConf.to_container(cfg, resolve=False)
    overrides = main.pop("base")
    main.pop("report", None)
    source = (overrides.get("dataset") or {}).get("source")
    if source is not None and source != main["dataset"]["source"]:
        # another data set: start from its own group config (configs/dataset/<source>.yaml), not from
        # the run's, whose source-specific keys (options) would otherwise leak into the base stage
        group = config_dir() / "dataset" / f"{source}.yaml"
        if not group.is_file():
            raise ValueError(f"base.dataset.source={source}: no configs/dataset/{source}.yaml to start from; "
                             f"use one of {sorted(p.stem for p in group.parent.glob('*.yaml'))}")
        main["dataset"] = OmegaConf.to_container(OmegaConf.load(group), resolve=False)
    target = (overrides.get("optim") or {}).get("_target_")
    if target is not None and target != main["optim"].get("_target_"):
        main["optim"] = overrides.pop("optim")     # another optimiser: its own keys only (AdamW has no momentum)
    main_cfg = OmegaConf.create(main)
    OmegaConf.set_struct(main_cfg, True)  # a key the run config lacks is a typo, not a new setting
    try:
        merged = OmegaConf.merge(main_cfg, OmegaConf.create(overrides))
    except ConfigKeyError as err:
        raise ValueError(f"the base section sets base.{err.full_key}, which is not a config key: {err.msg}") from err
    merged.adapter, merged.pruning = dict(FINETUNE), dict(NO_PRUNING)
    merged.save_model = True
    return merged


def unpruned_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without pruning: the run whose trained state a pruned run starts from."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pruning = dict(NO_PRUNING)
        cfg.report = False
    return cfg
