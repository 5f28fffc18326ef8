"""Every setting of a run that can be checked before training, checked before its directory is
written: value types and ranges (``spa.settings``), the named choices, the optimiser, the method's
own settings, and the adapter options on a weightless copy of the backbone."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from spa.data import normalization
from spa.data.sources import SOURCES
from spa.loggers import LOGGERS
from spa.models import check_head_init, check_packaged
from spa.models.torchvision_vit import check_torchvision_weights
from spa.pipeline.configs import setting
from spa.pipeline.methods import method_of
from spa.pipeline.parts import use_channels_last
from spa.settings import check_adapter_options, check_choice, check_device, check_optimizer, check_values, checked
from spa.training import SCHEDULERS, check_compile


def check_settings(cfg: DictConfig) -> None:
    """Every setting that can be checked before training, checked before the run directory is
    written (a typo must not leave a run directory behind): value types and ranges
    (``spa.settings``), the named choices, the optimiser, the method's own settings, and the
    adapter options on a weightless (meta-device) copy of the backbone. Raises :class:`SettingError`."""
    check_values(OmegaConf.to_container(cfg, resolve=True))
    t, d, b = cfg.train, cfg.dataset, cfg.backbone
    checked("train.compile", check_compile, setting(cfg, "train.compile"))
    checked("train.channels_last", use_channels_last, t.channels_last, torch.device("cpu"))
    checked("train.scheduler", check_choice, "train.scheduler", t.scheduler, SCHEDULERS)
    checked("dataset.source", check_choice, "dataset.source", d.source, tuple(SOURCES))
    checked("dataset.transform", normalization, d.transform)
    checked("device", check_device, str(cfg.device))
    checked("optim", check_optimizer, OmegaConf.to_container(cfg.optim, resolve=True))
    checked("backbone.head_init", check_head_init, setting(cfg, "backbone.head_init"))
    checked("logger", check_choice, "logger", setting(cfg, "logger.name"), LOGGERS)
    check_packaged(str(b.weights), setting(cfg, "backbone.packaged_weights"))
    if setting(cfg, "backbone.torchvision_weights") and str(b.weights) == "pretrained":
        checked("backbone.torchvision_weights", check_torchvision_weights, b.torchvision_weights)
    method = method_of(cfg)
    method.check(cfg)
    check_adapter_options(b.timm_name, OmegaConf.to_container(b.kwargs), bool(b.cifar_stem), cfg.adapter.kind,
                          OmegaConf.to_container(cfg.adapter.options), list(setting(cfg, "backbone.frozen") or []),
                          method.ignored(cfg))
