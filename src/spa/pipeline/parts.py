"""The parts of one run, built from its config: the data (before the run directory is written),
then the backbone with its starting weights and adapter, the loaders and the pruning session;
:class:`Parts` holds them for the stages and offers the stages' shared moves (train, record a step)."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from spa.adapters import apply_adapter, rank_report
from spa.adapters.convert import freeze
from spa.data import build_datasets, make_loader, normalization
from spa.metrics import count_parameters
from spa.metrics.collapse import Chance
from spa.models import declared_normalization
from spa.pipeline.configs import BASE_WEIGHTS, setting
from spa.pruning.session import PruningSession, example_input
from spa.pruning.widths import narrowest
from spa.records import MODEL, RunDir
from spa.saved import load_backbone
from spa.settings import SettingError, checked
from spa.training import apply_channels_last, build_scheduler, compiled, fit
from spa.utils import resolve_device, seed_everything, step_seed

log = logging.getLogger(__name__)

@dataclass
class Data:
    """The data of a run, built before its directory is written, and its input normalisation."""
    bundle: Any
    norm: dict[str, Any]                  # what the images are normalised with (mean, std, source)
    declared: dict[str, Any] | None       # ... when the weights declared it (travels into model.pt)


def weights_source(cfg: DictConfig, base_run: str | None) -> str:
    """The ``backbone.weights`` a run starts from: its base stage's model.pt, or the config's value."""
    if cfg.backbone.weights == BASE_WEIGHTS and base_run is None:
        raise SettingError("backbone.weights=base needs a base stage (a `base:` section in the experiment config)")
    return str(Path(base_run) / MODEL) if base_run is not None else str(cfg.backbone.weights)


def build_data(cfg: DictConfig, base_run: str | None) -> Data:
    """The data set of a run, normalised as its weights declare (else as its transform style says)."""
    declared = declared_normalization(weights_source(cfg, base_run), setting(cfg, "backbone.packaged_weights"))
    d = cfg.dataset
    norm = declared or style_normalization(d.transform)
    data = build_datasets(d.source, d.root, download=d.download, image_size=d.image_size, transform=d.transform,
                          classes=OmegaConf.to_container(d.classes) if d.classes is not None else None,
                          train_fraction=d.train_fraction, max_per_class=d.max_per_class,
                          test_max_per_class=d.test_max_per_class, val_fraction=d.val_fraction,
                          split_seed=d.split_seed, source_options=OmegaConf.to_container(d.options),
                          mean_std=(tuple(norm["mean"]), tuple(norm["std"])),
                          skip_unreadable=setting(cfg, "dataset.skip_unreadable"),
                          test_split=setting(cfg, "dataset.test_split"))
    return Data(data, norm, declared)


def style_normalization(transform: str) -> dict[str, Any]:
    """The normalisation of a ``dataset.transform`` style, as runs record it."""
    mean, std = normalization(transform)
    return {"mean": list(mean), "std": list(std), "source": f"transform:{transform}"}


def use_channels_last(setting: Any, device: torch.device) -> bool:
    """``train.channels_last``: true = on CUDA only (the default), ``always`` = on every device (on
    CPU, oneDNN's channels-last convolutions are ~1.5x faster here; results differ in the last bits,
    so the two settings are distinct configs), false = never."""
    if setting == "always":
        return True
    if isinstance(setting, bool):
        return setting and device.type == "cuda"
    raise ValueError(f"train.channels_last={setting!r}: use true (CUDA only), always (every device) or false")


@dataclass
class Parts:
    """What the stages of one run share: the model and its pruning session, the loaders, and what
    the records say of how the run started."""
    cfg: DictConfig
    model: torch.nn.Module
    device: torch.device
    rundir: RunDir
    train_loader: Any
    test_loader: Any
    val_loader: Any
    channels_last: bool
    size: tuple[int, int]
    data: Data
    session: PruningSession | None = None
    weights: Any = None                    # WeightsInfo of the starting weights
    ranks: dict[str, Any] | None = None    # what summary.json records of SPLoRA's ranks
    warnings: list[str] = field(default_factory=list)
    pear: dict[str, Any] | None = None     # Pear's record once its step is done (plan, knobs)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input normalisation (LRP's input bounds)."""
        return tuple(self.data.norm["mean"]), tuple(self.data.norm["std"])

    @functools.cached_property
    def chance(self) -> Chance:
        """The test set's majority-class share: what a collapsed network scores (spa.metrics.collapse)."""
        return Chance.of(self.data.bundle.test.targets)

    def with_health(self, row: dict[str, Any], widths: list[dict[str, Any]] | None) -> dict[str, Any]:
        """``row`` with the narrowest unit of ``widths`` (spa.pruning.widths; none for an unpruned run),
        the test set's majority-class share (``chance``, %) and whether the step ``collapsed`` to it."""
        unit, fraction = narrowest(widths or [])
        return {**row, "narrowest_unit": unit, "narrowest_fraction": fraction,
                "chance": round(self.chance.majority, 4), "collapsed": self.chance.collapsed(row.get("top1"))}

    def record_step(self, rows: list[dict[str, Any]], widths: list[dict[str, Any]] | None) -> None:
        """steps.csv with ``rows``, and the last row's step in widths.csv where there are ``widths``
        (both atomic; the checkpoint comes after them, so a resumed run redoes and rewrites both)."""
        self.rundir.write_steps(rows)
        if widths is not None:
            self.rundir.write_widths(int(rows[-1]["step"]), rows[-1]["density"], widths)

    def seed_step(self, step: int) -> None:
        """Seed pruning step ``step`` (its RNGs and the training loader's order) from the run's seed,
        so a resumed run redoes a step identically."""
        seed = step_seed(int(self.cfg.seed), step)
        seed_everything(seed, bool(self.cfg.train.deterministic))
        self.train_loader.generator.manual_seed(seed)

    def batches(self) -> int:
        """Optimiser steps per training epoch."""
        t = self.cfg.train
        return len(self.train_loader) if t.max_steps_per_epoch is None else \
            min(len(self.train_loader), t.max_steps_per_epoch)

    def train(self, epochs: int, phase: str, step: int, on_step=None, lr_scale: float = 1.0):
        """A training call with a fresh optimiser and LR schedule (the paper restarts both);
        returns the fit result and the record of the selected epoch. ``on_step``: called after
        every optimiser step; ``lr_scale``: times ``optim.lr`` (the recovery's, e.g. the ViT runs' lr / 3)."""
        t, batches = self.cfg.train, self.batches()
        optimizer = instantiate(self.cfg.optim)([p for p in self.model.parameters() if p.requires_grad])
        for group in optimizer.param_groups:
            group["lr"] *= lr_scale
        schedule = build_scheduler(t.scheduler, optimizer, epochs, batches, gamma=t.gamma)
        result = fit(self.model, self.train_loader, optimizer, schedule, epochs, self.device,
                     test_loader=self.test_loader, val_loader=self.val_loader, amp=bool(t.amp),
                     channels_last=self.channels_last, eval_every=t.eval_every, select=t.select, phase=phase,
                     step=step, max_steps=t.max_steps_per_epoch, on_epoch=self.rundir.append_epoch,
                     train_forward=compiled(self.model, setting(self.cfg, "train.compile")),
                     on_step=on_step, clip_grad_norm=setting(self.cfg, "train.clip_grad_norm"))
        return result, next(r for r in result.history if r.epoch == result.selected_epoch)


def build_parts(cfg: DictConfig, rundir: RunDir, built: Data, base_run: str | None, channels: bool) -> Parts:
    """The backbone with its starting weights and the adapter, on the device, the loaders and (where
    the run prunes ``channels``) the pruning session."""
    seed_everything(int(cfg.seed), bool(cfg.train.deterministic))
    device = resolve_device(cfg.device)
    b, d, data, norm = cfg.backbone, cfg.dataset, built.bundle, built.norm
    log.info("data %s (%s layout): %s, %d classes; validation: %s; normalised with mean %s, std %s (%s)", d.name,
             data.layout, data.sizes(), data.num_classes, data.stats.get("val_split", "none"), norm["mean"],
             norm["std"], norm["source"])
    model, weights = load_backbone(b.timm_name, data.num_classes, weights=weights_source(cfg, base_run),
                                   pretrained_tag=b.pretrained_tag, cifar_stem=b.cifar_stem,
                                   kwargs=OmegaConf.to_container(b.kwargs),
                                   packaged_weights=setting(cfg, "backbone.packaged_weights"),
                                   head_init=setting(cfg, "backbone.head_init"),
                                   torchvision_weights=setting(cfg, "backbone.torchvision_weights"))
    warnings: list[str] = []
    if weights.source == "none" and not b.allow_random:
        msg = ("this run starts from random weights (backbone.weights=none): transfer results will not be comparable "
               "with the paper; use backbone.weights=pretrained or PATH, or backbone.allow_random=true to silence this")
        log.warning(msg)
        warnings.append(msg)
    options = OmegaConf.to_container(cfg.adapter.options)
    model = apply_adapter(model, cfg.adapter.kind, **options)
    freeze(model, setting(cfg, "backbone.frozen") or [])
    ranks = rank_report(model, options["rank"], options.get("rank_limit", "paper")) if "rank" in options else None
    channels_last = use_channels_last(cfg.train.channels_last, device)
    model.to(device)
    if channels_last:
        apply_channels_last(model, device)
    params = count_parameters(model)
    log.info("parameters: %d learned (trainable), %d total, %d deployable after fusing (%s)", params.trainable,
             params.total, params.deployable, cfg.adapter.name)

    t, seed = cfg.train, int(cfg.seed)
    workers = None if t.num_workers == "auto" else int(t.num_workers)

    def loader(dataset, batch_size: int, train: bool):
        return make_loader(dataset, batch_size, train=train, device=device, seed=seed, num_workers=workers)
    train_loader, test_loader = loader(data.train, t.batch_size, True), loader(data.test, t.eval_batch_size, False)
    val_loader = loader(data.val, t.eval_batch_size, False) if data.val is not None else None
    size = (int(d.image_size), int(d.image_size))
    session = PruningSession(model, example_input(model, size)) if channels else None
    if session is not None and setting(cfg, "pruning.ignore"):
        checked("pruning.ignore", session.check_ignore, list(cfg.pruning.ignore))   # before any training
    return Parts(cfg=cfg, model=model, device=device, rundir=rundir, train_loader=train_loader,
                 test_loader=test_loader, val_loader=val_loader, channels_last=channels_last, size=size,
                 data=built, session=session, weights=weights, ranks=ranks, warnings=warnings)
