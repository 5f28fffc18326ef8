"""The only module that reads the Hydra config: it builds the parts, runs the stages and writes
the records. Everything it calls takes plain arguments.

A config may carry a ``base`` section: a pretraining run (full training, no pruning) that is run
first, once, and whose ``model.pt`` becomes this run's ``backbone.weights``.
"""
from __future__ import annotations

import copy
import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from spa import config_dir, repo_root
from spa.adapters import adapter_layers, apply_adapter, fuse, rank_report, save_task
from spa.adapters import pear as pear_lib
from spa.adapters.convert import freeze, head_only
from spa.data import build_datasets, make_loader, normalization
from spa.data.fingerprint import fingerprint
from spa.data.sources import SOURCES
from spa.loggers import LOGGERS, make_logger
from spa.metrics import count_parameters
from spa.metrics.collapse import Chance
from spa.models import check_head_init, check_packaged, create_backbone, declared_normalization, save_model_file
from spa.models.torchvision_vit import check_torchvision_weights
from spa.pruning import check_pruning
from spa.pruning.blocks import BLOCK_METHODS, BlockPruner, attach_blocks, empty_lines, pruned_parameters
from spa.pruning.importance import CRITERIA
from spa.pruning.lrp import input_bounds
from spa.pruning.schedule import SCOPES, Plan, check_round_to, schedule_plan
from spa.pruning.session import PruningSession, count_macs, example_input
from spa.pruning.widths import block_widths, narrowest, session_widths
from spa.records import (
    CHECKPOINT,
    FINGERPRINT,
    HISTORY,
    MODEL,
    SUMMARY,
    TASK,
    WARMUP,
    RunDir,
    RunSummary,
    config_hash,
    is_unpruned,
)
from spa.settings import (
    SettingError,
    check_adapter_options,
    check_choice,
    check_device,
    check_optimizer,
    check_values,
    checked,
)
from spa.training import (
    SCHEDULERS,
    apply_channels_last,
    autocast_context,
    build_scheduler,
    check_compile,
    compiled,
    evaluate,
    fit,
)
from spa.utils import (
    atomic_torch_save,
    atomic_write_json,
    device_description,
    git_state,
    package_versions,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)

FINETUNE = {"name": "finetune", "kind": "finetune", "prunable": True, "options": {}}
NO_PRUNING = {"name": "none"}
BASE_WEIGHTS = "base"   # backbone.weights value of a run whose weights come from its base stage


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the base stage (if any) and then this run; return this run's summary (a dict). Every
    stage's settings are checked before the first stage starts."""
    base_cfg = base_config(cfg) if cfg.get("base") else None
    for stage in (base_cfg, *start_chain(cfg), cfg):
        if stage is not None:
            check_settings(stage)
    base_dir = None
    if base_cfg is not None:
        base_dir = run_single(base_cfg)["run_dir"]
        # the config says "base" (location-free, so the config hash survives moving the results);
        # the summary records the file's path and SHA-256
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.backbone.weights = BASE_WEIGHTS
    # a finished run is found without its start runs (whose weights may not be here: committed records only);
    # one to be replaced (overwrite=true) starts from them like any other
    skip_starts = RunDir(cfg.paths.run_dir).finished and not cfg.get("overwrite", False)
    initial = None if skip_starts else start_run(cfg, base_dir)
    summary = run_single(cfg, base_run=base_dir, initial_run=initial)
    if cfg.get("report"):
        from spa.reporting import experiment_report
        outputs = experiment_report(Path(cfg.paths.runs_dir) / cfg.exp_name, Path(cfg.paths.results_dir), cfg.exp_name,
                                    report=cfg.report)
        for kind, path in outputs.items():
            log.info("%s: %s", kind, path)
    return summary


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


def start_config(cfg: DictConfig) -> DictConfig | None:
    """The run this run starts from, or None (it trains from its weights): a pruned run starts from
    the unpruned run of the same (dataset, learner, seed), trained once and shared by every criterion;
    a Pear run from its warm-up run (shared by every ratio and variant), or, with ``pruning.after``, from
    the channel-pruned run it goes on from (which starts from its own unpruned run)."""
    if method_name(cfg) == "pear":
        if cfg.pruning.get("after"):
            return channel_start_config(cfg)
        return warmup_config(cfg) if cfg.schedule.get("reuse_unpruned", True) else None
    if not is_unpruned(cfg.pruning) and cfg.schedule.get("reuse_unpruned", True):
        return unpruned_config(cfg)
    return None


def start_chain(cfg: DictConfig) -> list[DictConfig]:
    """The configs of the runs :func:`start_config` chains before ``cfg``, the first first."""
    chain, start = [], start_config(cfg)
    while start is not None:
        chain.insert(0, start)
        start = start_config(start)
    return chain


def start_run(cfg: DictConfig, base_dir: str | None) -> str | None:
    """Run (or find finished) the chain of runs ``cfg`` starts from; the directory of the last."""
    initial = None
    for start in start_chain(cfg):
        initial = run_single(with_weights(start), base_run=base_dir, initial_run=initial)["run_dir"]
    return initial


def with_weights(start: DictConfig) -> DictConfig:
    """``start``, its run marked unfinished (summary.json removed) where it is finished but only its
    records are here (no checkpoint.pt: a fresh clone of the committed records), so that it trains
    again for the run that starts from its weights; its records are rewritten (on the same CPU kernels
    with the same numbers; the committed ones stay in git)."""
    rundir = RunDir(start.paths.run_dir)
    if rundir.finished and not rundir.file(CHECKPOINT).is_file():
        log.warning("%s is finished but has no %s (its records only, e.g. committed ones): training it again for "
                    "the run that starts from it", rundir.path, CHECKPOINT)
        rundir.file(SUMMARY).unlink()
    return start


def warmup_config(cfg: DictConfig) -> DictConfig:
    """Pear's warm-up: ``cfg`` unpruned for ``pruning.prune_at_epoch`` epochs (a run of its own)."""
    start = unpruned_config(cfg)
    epochs = int(cfg.pruning.prune_at_epoch)
    with open_dict(start):
        start.pruning = {"name": f"warmup_{epochs}ep", "structure": WARMUP}
        start.train.epochs = epochs
        start.train.epochs_by_adapter = {}
    return start


def channel_start_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``pruning`` = the channel-pruning group ``pruning.after`` (configs/pruning/<after>.yaml)."""
    group = config_dir() / "pruning" / f"{cfg.pruning.after}.yaml"
    channel = OmegaConf.load(group) if group.is_file() else None
    if channel is None or "criterion" not in channel:
        choices = sorted(p.stem for p in group.parent.glob("*.yaml") if "criterion" in OmegaConf.load(p))
        raise SettingError(f"pruning.after={cfg.pruning.after}: Pear goes on from a channel-pruned run; use one of the "
                           f"channel prunings {choices} (or pruning.after=null)")
    start = copy.deepcopy(cfg)
    with open_dict(start):
        start.pruning = channel
        start.report = False
    return start


def unpruned_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without pruning: the run whose trained state a pruned run starts from."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pruning = dict(NO_PRUNING)
        cfg.report = False
    return cfg


def run_single(cfg: DictConfig, base_run: str | None = None, initial_run: str | None = None) -> dict[str, Any]:
    """One run: skip if finished with this config on the same data, refuse a changed config, else
    train and record. Its settings were checked by :func:`run`; its data is built (and checked)
    here, before the run directory is written."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    built = build_data(cfg, base_run)
    resolved[FINGERPRINT] = fingerprint(built.bundle, cfg.dataset.root)
    rundir = RunDir(cfg.paths.run_dir)
    with rundir.lock():
        status, done = rundir.prepare(resolved, overwrite=bool(cfg.get("overwrite", False)))
        if status == "done":
            log.info("skipping %s: finished with the same config and data (test top-1 %.2f%%)",
                     rundir.path, done["metrics"]["test_top1"])
            return done
        observer = make_logger(OmegaConf.to_container(cfg.get("logger")) if cfg.get("logger") else None,
                               rundir.path, Path(cfg.paths.runs_dir))
        if observer is not None:
            rundir.observers.append(observer)
        try:
            with rundir.logging_to_file():
                summary = _execute(cfg, resolved, rundir, base_run, status, initial_run, built)
        finally:
            if observer is not None:
                observer.close()
                rundir.observers.remove(observer)
    return summary.to_dict()


def check_settings(cfg: DictConfig) -> None:
    """Every setting that can be checked before training, checked before the run directory is
    written (a typo must not leave a run directory behind): value types and ranges
    (``spa.settings``), the named choices, the optimiser, the pruning method and schedule, and the
    adapter options on a weightless (meta-device) copy of the backbone. Raises :class:`SettingError`."""
    check_values(OmegaConf.to_container(cfg, resolve=True))
    t, d, b = cfg.train, cfg.dataset, cfg.backbone
    checked("train.compile", check_compile, t.get("compile", False))
    checked("train.channels_last", use_channels_last, t.channels_last, torch.device("cpu"))
    checked("train.scheduler", check_choice, "train.scheduler", t.scheduler, SCHEDULERS)
    checked("dataset.source", check_choice, "dataset.source", d.source, tuple(SOURCES))
    checked("dataset.transform", normalization, d.transform)
    checked("device", check_device, str(cfg.device))
    checked("optim", check_optimizer, OmegaConf.to_container(cfg.optim, resolve=True))
    checked("backbone.head_init", check_head_init, b.get("head_init", "timm"))
    checked("logger", check_choice, "logger", (cfg.get("logger") or {}).get("name", "none"), LOGGERS)
    check_packaged(str(b.weights), b.get("packaged_weights"))
    if b.get("torchvision_weights") and str(b.weights) == "pretrained":
        checked("backbone.torchvision_weights", check_torchvision_weights, b.torchvision_weights)
    if method_name(cfg) == "blocks":
        check_block_pruning(cfg)
    elif method_name(cfg) == "pear":
        check_pear(cfg)
    elif not is_unpruned(cfg.pruning):
        checked("pruning", check_pruning, cfg.pruning.get("criterion", cfg.pruning.name))
        checked("pruning.round_to", check_round_to, cfg.pruning.get("round_to", 1))
        checked("pruning.scope", check_choice, "pruning.scope", cfg.pruning.get("scope", "global"), SCOPES)
        if cfg.pruning.get("scope", "global") == "local" and cfg.pruning.get("round_to", 1) != 1:
            raise SettingError("pruning.scope=local keeps the same fraction of every layer and rounds no width: use "
                               "pruning.round_to=1, or pruning.scope=global to round widths")
        if not cfg.adapter.get("prunable", True):
            fix = (f"to prune with this adapter use adapter={cfg.adapter.name.replace('lora', 'splora')}"
                   if "lora" in cfg.adapter.name else "prune it by blocks: pruning=block_movement or block_magnitude")
            raise SettingError(f"adapter={cfg.adapter.name} cannot be channel-pruned (prunable: false); {fix}")
        checked("schedule", Plan, 1, cfg.schedule.step_fraction, cfg.schedule.target_density)
    check_adapter_options(b.timm_name, OmegaConf.to_container(b.kwargs), bool(b.cifar_stem), cfg.adapter.kind,
                          OmegaConf.to_container(cfg.adapter.options), list(b.get("frozen") or []),
                          list(cfg.pruning.get("ignore") or []) if method_name(cfg) == "iterative" else None)


BLOCK_ADAPTERS = ("finetune", "splopa")


def check_block_pruning(cfg: DictConfig) -> None:
    """A block-pruning config: its method, the adapter it masks, the stages and the block."""
    pr = cfg.pruning
    checked("pruning.method", check_choice, "pruning.method", pr.method, BLOCK_METHODS)
    if cfg.adapter.kind not in BLOCK_ADAPTERS:
        raise SettingError(f"pruning={pr.name} masks the blocks of SPLoPA's or fine-tuning's matrices, not "
                           f"adapter={cfg.adapter.name}; use adapter=splopa_r64, splopa_r128 or finetune (or a channel "
                           f"pruning: pruning=taylor)")
    key = "thresholds" if pr.method == "soft_movement" else "densities"
    targets = pr.get(key)
    if not targets or not all(isinstance(v, (int, float)) and 0 < v < 1 for v in targets):
        raise SettingError(f"pruning.{key}={targets}: use a list of numbers in (0, 1), e.g. pruning.{key}=[0.5,0.3]")
    ordered = sorted(targets, reverse=key == "densities")
    if list(targets) != ordered or len(set(targets)) != len(targets):
        raise SettingError(f"pruning.{key}={list(targets)}: each stage goes further, so the list must be strictly "
                           f"{'decreasing' if key == 'densities' else 'increasing'}, e.g. {ordered}")
    if pr.get("epochs_per_stage") is None:
        raise SettingError(f"pruning={pr.name} sets no pruning.epochs_per_stage: use an int >= 1, "
                           f"e.g. pruning.epochs_per_stage=2")
    warm = [pr.get("initial_warmup", 0), pr.get("final_warmup", 0)]     # each in [0, 1): PRUNING_RULES
    if sum(warm) >= 1:
        raise SettingError(f"pruning.initial_warmup={warm[0]}, final_warmup={warm[1]}: fractions of a stage "
                           f"that sum to less than 1, e.g. 0.1 and 0.2")
    shape = block_shape(cfg)
    if min(shape) < 1:
        raise SettingError(f"pruning.block_shape={list(shape)}: use two ints >= 1, e.g. [32,32]")
    if cfg.adapter.kind == "splopa" and tuple(cfg.adapter.options.block_shape) != shape:
        raise SettingError(f"pruning.block_shape={list(shape)} but SPLoPA's prototypes are "
                           f"{list(cfg.adapter.options.block_shape)} blocks: block pruning masks the prototypes' "
                           f"blocks; use pruning.block_shape=null")
    columns = pr.get("columns") or []
    if not all(isinstance(c, str) and c for c in columns):
        raise SettingError(f"pruning.columns={columns}: use a list of layer-name endings, e.g. [conv_pwl] "
                           f"(MobileNetV2, EfficientNet) or [mlp.fc2] (ViT / DeiT)")
    if cfg.train.get("compile", False):
        raise SettingError("train.compile with block pruning: its gradient hooks need eager mode; use "
                           "train.compile=false")


def check_pear(cfg: DictConfig) -> None:
    """A Pear config (spa.adapters.pear): the adapter it prunes and shares, and its knobs."""
    pr = cfg.pruning
    if cfg.adapter.kind != "splora":
        raise SettingError(f"pruning={pr.name} prunes and shares low-rank (LoRA / SPLoRA) adapters, not "
                           f"adapter={cfg.adapter.name}; use adapter=pear_lora_r8 (or another LoRA / SPLoRA adapter)")
    for key, choices in (("importance", pear_lib.IMPORTANCES), ("mapping", pear_lib.MAPPINGS),
                         ("sharing", pear_lib.SHARINGS), ("checkpoint", pear_lib.CHECKPOINTS)):
        checked(f"pruning.{key}", check_choice, f"pruning.{key}", pr.get(key), choices)
    ratio = pr.get("ratio")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise SettingError(f"pruning.ratio={ratio}: the fraction of adapters pruned, a number in [0, 1), e.g. 0.5")
    for key in ("prune_at_epoch", "score_batches"):
        if not isinstance(pr.get(key), int) or isinstance(pr.get(key), bool) or pr.get(key) < 1:
            raise SettingError(f"pruning.{key}={pr.get(key)}: use an int >= 1")
    if pr.prune_at_epoch >= cfg.train.epochs:
        raise SettingError(f"pruning.prune_at_epoch={pr.prune_at_epoch} leaves no training after Pear's step "
                           f"(train.epochs={cfg.train.epochs}): use pruning.prune_at_epoch<{cfg.train.epochs}")
    weight = pr.get("blend_weight")
    if weight is not None and (not isinstance(weight, (int, float)) or not 0 <= weight <= 1):
        raise SettingError(f"pruning.blend_weight={weight}: null (importance-weighted) or a number in [0, 1]")
    if pr.checkpoint == "blend" and pr.sharing == "none":
        raise SettingError("pruning.checkpoint=blend initialises the donors, and pruning.sharing=none has none: "
                           "use pruning.checkpoint=fold or none, or pruning.sharing=tied")


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
    declared = declared_normalization(weights_source(cfg, base_run), cfg.backbone.get("packaged_weights"))
    d = cfg.dataset
    norm = declared or style_normalization(d.transform)
    data = build_datasets(d.source, d.root, download=d.download, image_size=d.image_size, transform=d.transform,
                          classes=OmegaConf.to_container(d.classes) if d.classes is not None else None,
                          train_fraction=d.train_fraction, max_per_class=d.max_per_class,
                          test_max_per_class=d.test_max_per_class, val_fraction=d.val_fraction,
                          split_seed=d.split_seed, source_options=OmegaConf.to_container(d.options),
                          mean_std=(tuple(norm["mean"]), tuple(norm["std"])), skip_unreadable=d.get("skip_unreadable"),
                          test_split=d.get("test_split", "test"))
    return Data(data, norm, declared)


def _execute(cfg: DictConfig, resolved: dict[str, Any], rundir: RunDir, base_run: str | None,
             status: str, initial_run: str | None, built: Data) -> RunSummary:
    """Build the parts, run the method, write the records."""
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    log.info("run %s", rundir.path)
    parts = build_parts(cfg, rundir, built, base_run)
    rows, selection = METHODS[method_name(cfg)](parts, status, initial_run)
    return write_records(parts, resolved, rows, selection, base_run, started, t0)


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
        seed = int(self.cfg.seed) * 1000 + step
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
                     train_forward=compiled(self.model, t.get("compile", False)), on_step=on_step,
                     clip_grad_norm=t.get("clip_grad_norm"))
        return result, next(r for r in result.history if r.epoch == result.selected_epoch)


def build_parts(cfg: DictConfig, rundir: RunDir, built: Data, base_run: str | None) -> Parts:
    """The backbone with its starting weights and the adapter, on the device, the loaders and (for a
    pruned run) the pruning session."""
    seed_everything(int(cfg.seed), bool(cfg.train.deterministic))
    device = resolve_device(cfg.device)
    b, d, data, norm = cfg.backbone, cfg.dataset, built.bundle, built.norm
    log.info("data %s (%s layout): %s, %d classes; validation: %s; normalised with mean %s, std %s (%s)", d.name,
             data.layout, data.sizes(), data.num_classes, data.stats.get("val_split", "none"), norm["mean"],
             norm["std"], norm["source"])
    model, weights = create_backbone(b.timm_name, data.num_classes, weights=weights_source(cfg, base_run),
                                     pretrained_tag=b.pretrained_tag, cifar_stem=b.cifar_stem,
                                     kwargs=OmegaConf.to_container(b.kwargs),
                                     packaged_weights=b.get("packaged_weights"), head_init=b.get("head_init", "timm"),
                                     torchvision_weights=b.get("torchvision_weights"))
    warnings: list[str] = []
    if weights.source == "none" and not b.allow_random:
        msg = ("this run starts from random weights (backbone.weights=none): transfer results will not be comparable "
               "with the paper; use backbone.weights=pretrained or PATH, or backbone.allow_random=true to silence this")
        log.warning(msg)
        warnings.append(msg)
    options = OmegaConf.to_container(cfg.adapter.options)
    model = apply_adapter(model, cfg.adapter.kind, **options)
    freeze(model, b.get("frozen") or [])
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
    channels = (method_name(cfg) == "iterative" and not is_unpruned(cfg.pruning)) or \
        (method_name(cfg) == "pear" and cfg.pruning.get("after"))
    session = PruningSession(model, example_input(model, size)) if channels else None
    if session is not None and cfg.pruning.get("ignore"):
        checked("pruning.ignore", session.check_ignore, list(cfg.pruning.ignore))   # before any training
    if session is not None and method_name(cfg) == "iterative" and cfg.schedule.get("density", "filters") == "filters":
        checked("pruning.max_group_pruning", session.check_reachable, float(cfg.schedule.target_density),
                cfg.pruning.get("max_group_pruning"), list(cfg.pruning.get("ignore") or []))
    return Parts(cfg=cfg, model=model, device=device, rundir=rundir, train_loader=train_loader,
                 test_loader=test_loader, val_loader=val_loader, channels_last=channels_last, size=size,
                 data=built, session=session, weights=weights, ranks=ranks, warnings=warnings)


def iterative(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The paper's method (spa.md §2): train (or resume, or start from the shared unpruned run), then
    score, prune and recover step by step. Returns the steps.csv rows and the last model selection."""
    rows, done_step, selection = _initial_state(parts, parts.session, status, initial_run)
    if parts.session is not None:
        selection = _prune(parts, parts.session, rows, done_step) or selection
    return rows, selection


def block_pruning(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Block pruning (spa.pruning.blocks): from the unpruned run (or this run's checkpoint), one
    training stage per target of ``pruning.densities`` (τ of ``pruning.thresholds`` for soft
    movement), the masks following the cubic schedule within each stage; a steps.csv row and a
    checkpoint after every stage."""
    cfg, model, pr = parts.cfg, parts.model, parts.cfg.pruning
    attach_blocks(model, block_shape(cfg), dense=cfg.adapter.kind == "finetune",
                  exclude=cfg.adapter.options.get("exclude"), columns=list(pr.get("columns") or ()))
    if parts.channels_last:
        apply_channels_last(model, parts.device)
    pruner = BlockPruner(model, pr.method, score_lr=pr.get("score_lr"), l1=pr.get("l1", 1.0))
    rows, done_step, selection = _initial_state(parts, None, status, initial_run)
    if status != "resume":
        rows[0].update(density=1.0, kept_filters=pruner.kept_blocks, params_nonzero=rows[0]["params_deployable"])
        widths = block_widths(pruner.layers)
        rows[0] = parts.with_health(rows[0], widths)
        parts.record_step(rows, widths)
    targets = list(pr.thresholds if pr.method == "soft_movement" else pr.densities)
    epochs = int(pr.epochs_per_stage)
    stages = pruner.stages(targets, epochs * parts.batches(), pr.get("initial_warmup", 0), pr.get("final_warmup", 0))
    for step in range(done_step + 1, len(stages) + 1):
        t0 = time.perf_counter()
        parts.seed_step(step)
        pruner.begin(stages[step - 1])
        result, final = parts.train(epochs, "prune", step, on_step=pruner.on_step)
        row = step_row(step, model, None, None, final, parts.size, time.perf_counter() - t0)
        # learned: without the pruned blocks' terms; nonzero: the deployed weights a sparse format stores
        pruned = pruned_parameters(model)
        widths = block_widths(pruner.layers)
        rows.append(parts.with_health({**row, "density": round(pruner.density, 6), "kept_filters": pruner.kept_blocks,
                                       "params_learned": row["params_learned"] - pruned["learned"],
                                       "params_nonzero": row["params_deployable"] - pruned["weights"]}, widths))
        log.info("block pruning stage %d (%s): density %.3f (%d / %d blocks), test top-1 %.2f%%", step, pr.method,
                 pruner.density, pruner.kept_blocks, pruner.original_blocks, final.test_top1)
        selection = _selection(result)
        parts.record_step(rows, widths)
        save_checkpoint(parts.rundir, model, None, step, selection)
        atomic_write_json(parts.rundir.file(HISTORY), {
            "structure": "blocks", "unit": "blocks", "method": pr.method, "block_shape": list(block_shape(cfg)),
            "columns": list(pr.get("columns") or ()),
            "original_blocks": pruner.original_blocks, "layers": len(pruner.layers),
            "steps": [{"step": r["step"], "density": r["density"], "kept_blocks": r["kept_filters"]} for r in rows],
            **empty_lines(model)})
    return rows, selection


PEAR = "pear.json"    # Pear's record: positions, importances, pruned positions and their donors, knobs


def pear_step(parts: Parts, status: str, initial_run: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pear (spa.adapters.pear): from the warm-up run (or the channel-pruned run of ``pruning.after``, or
    this run's checkpoint), score the adapters, prune and share them, then train the rest of
    ``train.epochs`` with a rebuilt optimiser; steps.csv row 1 and a checkpoint after it."""
    cfg, model, pr = parts.cfg, parts.model, parts.cfg.pruning
    rows, done_step, selection = _initial_state(parts, parts.session, status, initial_run)
    rows[0].setdefault("params_stored", rows[0]["params_learned"])
    if done_step >= 1:
        return rows, selection
    t0 = time.perf_counter()
    parts.seed_step(1)
    batches = itertools.islice(iter(parts.train_loader), int(pr.score_batches))
    amp = bool(cfg.train.amp)
    scores = pear_lib.importance(model, pr.importance, batches, parts.device, seed=int(cfg.seed) * 1000 + 1,
                                 autocast=lambda: autocast_context(parts.device, amp))
    plan = pear_lib.make_plan(model, scores, float(pr.ratio), pr.mapping)
    pear_lib.apply_plan(model, plan, pr.sharing, pr.checkpoint, pr.get("blend_weight"))
    parts.pear = pear_record(cfg, model, plan)
    log.info("Pear: %d of %d adapters pruned (%s importance), %d given a donor (sharing %s), checkpoint %s; %d "
             "unique adapters learned", len(plan["pruned"]), len(plan["positions"]), pr.importance,
             len(parts.pear["shared"]), pr.sharing, pr.checkpoint, parts.pear["unique_adapters"])
    before = evaluate(model, parts.test_loader, parts.device, amp, parts.channels_last)
    result, final = parts.train(int(cfg.train.epochs) - int(pr.prune_at_epoch), "pear", 1)
    row = step_row(1, model, parts.session, before["top1"], final, parts.size, time.perf_counter() - t0)
    widths = session_widths(parts.session) if parts.session is not None else None
    rows.append(parts.with_health({**row, "params_stored": row["params_learned"] + pear_lib.residual_parameters(model)},
                                  widths))
    selection = _selection(result)
    parts.record_step(rows, widths)
    save_checkpoint(parts.rundir, model, parts.session, 1, selection, pear=parts.pear)
    atomic_write_json(parts.rundir.file(PEAR), parts.pear)
    return rows, selection


def pear_record(cfg: DictConfig, model: torch.nn.Module, plan: dict[str, Any]) -> dict[str, Any]:
    """What pear.json, the checkpoint and task.pt keep of Pear's step: the plan and the knobs."""
    pr = cfg.pruning
    unique = {id(layer.A) for layer in pear_lib.positions(model).values() if layer.A.requires_grad}
    return {"structure": "adapters", "unit": "adapters", "plan": plan, "importance": pr.importance,
            "score_batches": int(pr.score_batches), "prune_at_epoch": int(pr.prune_at_epoch), "sharing": pr.sharing,
            "checkpoint": pr.checkpoint, "blend_weight": pr.get("blend_weight"), "after": pr.get("after"),
            "unique_adapters": len(unique), "no_donor": [n for n, d in plan["donors"].items() if d is None],
            # the donors a pruned position received (none with sharing=none: the plan's mapping is not used)
            "shared": {n: d for n, d in plan["donors"].items() if d is not None and pr.sharing != "none"},
            "residual_parameters": pear_lib.residual_parameters(model)}


def restore_pear(model: torch.nn.Module, record: dict[str, Any]) -> None:
    """Rebuild Pear's structure (ties, residual buffers) on a model whose values are then loaded."""
    pear_lib.apply_plan(model, record["plan"], record["sharing"], record["checkpoint"], fresh=False)


# how a run goes from its starting weights to its final model
METHODS = {"iterative": iterative, "blocks": block_pruning, "pear": pear_step}
STRUCTURE_METHODS = {"blocks": "blocks", "adapters": "pear"}    # pruning.structure -> METHODS entry


def method_name(cfg: DictConfig) -> str:
    """The METHODS entry of a run: ``blocks`` for a block-pruning config, ``pear`` for Pear's, else
    the iterative one (channel pruning, or none)."""
    return STRUCTURE_METHODS.get(cfg.pruning.get("structure"), "iterative")


def block_shape(cfg: DictConfig) -> tuple[int, int]:
    """``pruning.block_shape``; null: the SPLoPA adapter's blocks (32 × 32 for fine-pruning)."""
    shape = cfg.pruning.get("block_shape") or cfg.adapter.options.get("block_shape") or (32, 32)
    return int(shape[0]), int(shape[1])


def write_records(parts: Parts, resolved: dict[str, Any], rows: list[dict[str, Any]], selection: dict[str, Any],
                  base_run: str | None, started: datetime, t0: float) -> RunSummary:
    """model.pt (fused) and task.pt, then summary.json, written last: it marks the run finished."""
    cfg, model, rundir, session, device = parts.cfg, parts.model, parts.rundir, parts.session, parts.device
    b, d, data = cfg.backbone, cfg.dataset, parts.data.bundle
    params = count_parameters(model)
    last = rows[-1]
    metrics = {"test_top1": last["top1"], "test_top5": last["top5"], "test_loss": last["test_loss"],
               "val_top1": last["val_top1"], "train_loss": last["train_loss"], "train_top1": last["train_top1"],
               "density": last["density"]}
    files: dict[str, int] = {}
    if cfg.save_model:
        # model.pt: the fused, plain model (reusable as backbone.weights); task.pt: what the task learned
        structure = None if session is None else {"history": session.history, "input_size": list(parts.size),
                                                  "original_filters": session.original_filters}
        task_structure = structure
        if method_name(cfg) == "blocks":
            task_structure = {"structure": "blocks", "block_shape": list(block_shape(cfg)),
                              "columns": list(cfg.pruning.get("columns") or ()),
                              "exclude": cfg.adapter.options.get("exclude")}
        elif method_name(cfg) == "pear":     # the sharing map and the checkpoint's layout; values in the state
            task_structure = {"structure": "pear", "plan": parts.pear["plan"], "sharing": parts.pear["sharing"],
                              "checkpoint": parts.pear["checkpoint"], "channels": structure}
        deployable = fuse(model) if adapter_layers(model) else model
        save_model_file(deployable, rundir.file(MODEL), timm_name=b.timm_name, cifar_stem=b.cifar_stem,
                        kwargs=OmegaConf.to_container(b.kwargs), classes=data.classes, structure=structure,
                        normalization=parts.data.declared)
        files[MODEL] = rundir.file(MODEL).stat().st_size
        if cfg.adapter.kind != "finetune":
            save_task(model, rundir.file(TASK),
                      adapter={"kind": cfg.adapter.kind, "options": OmegaConf.to_container(cfg.adapter.options)},
                      classes=data.classes, structure=task_structure, frozen=list(b.get("frozen") or []),
                      base={"timm_name": b.timm_name, "weights": parts.weights.name or parts.weights.source,
                            "sha256": parts.weights.sha256})
            files[TASK] = rundir.file(TASK).stat().st_size
    summary = RunSummary(
        run_dir=str(rundir.path), exp_name=cfg.exp_name, dataset=d.name, backbone=b.name, adapter=cfg.adapter.name,
        pruning=cfg.pruning.name, seed=int(cfg.seed), config_hash=config_hash(resolved), git=git_state(repo_root()),
        versions=package_versions(), device=str(device), device_name=device_description(device),
        data={**data.sizes(), "num_classes": data.num_classes, "majority": round(parts.chance.majority, 4),
              "classes": data.classes, "layout": data.layout, "root": str(Path(d.root).expanduser().resolve()),
              **data.stats, "normalization": parts.data.norm, "fingerprint": resolved[FINGERPRINT]},
        weights=parts.weights.to_dict(), files=files, ranks=parts.ranks,
        params={"total": params.total, "trainable": params.trainable, "deployable": params.deployable,
                **({"stored": params.trainable + pear_lib.residual_parameters(model)}
                   if method_name(cfg) == "pear" else {})},
        epochs=initial_epochs(cfg), selection=selection["selection"], selected_epoch=selection["selected_epoch"],
        metrics=metrics, pruning_steps=len(rows) - 1,
        wall_time_s=round(time.perf_counter() - t0, 2), started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), base_run=base_run,
        warnings=parts.warnings)
    rundir.write_summary(summary)
    log.info("finished %s: test top-1 %.2f%%, top-5 %.2f%% at density %.3f in %.0fs", rundir.path,
             metrics["test_top1"], metrics["test_top5"], metrics["density"], summary.wall_time_s)
    return summary


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


def initial_epochs(cfg: DictConfig) -> int:
    """Epochs of the initial (unpruned) training: ``train.epochs_by_adapter[kind]`` or ``train.epochs``
    (Pear: its warm-up, ``pruning.prune_at_epoch``)."""
    if method_name(cfg) == "pear" and not cfg.pruning.get("after"):
        return int(cfg.pruning.prune_at_epoch)
    return int(cfg.train.get("epochs_by_adapter", {}).get(cfg.adapter.kind, cfg.train.epochs))


def _selection(result) -> dict[str, Any]:
    return {"selection": result.selection, "selected_epoch": result.selected_epoch}


def _initial_state(parts: Parts, session: PruningSession | None, status: str, initial_run: str | None):
    """Step 0: resume from this run's checkpoint, start from the unpruned run, or train.
    Returns (steps.csv rows so far, last completed step, model selection of the last training)."""
    rundir, model, device = parts.rundir, parts.model, parts.device
    if status == "resume":
        checkpoint = torch.load(rundir.file(CHECKPOINT), map_location=device, weights_only=True)
        if session is not None:
            session.replay(checkpoint["history"])
            if parts.channels_last:
                apply_channels_last(model, device)
        if checkpoint.get("pear") is not None:        # after Pear's step: its ties and residuals first
            restore_pear(model, checkpoint["pear"])
            parts.pear = checkpoint["pear"]
        model.load_state_dict(checkpoint["state_dict"])
        done = int(checkpoint["step"])
        rundir.keep_epochs_until(done)
        log.info("resuming %s after step %d", rundir.path, done)
        return [r for r in rundir.read_steps() if r["step"] <= done], done, checkpoint["selection"]
    if initial_run is not None:
        initial = RunDir(initial_run)
        if not initial.file(CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"the unpruned run {initial_run} has no {CHECKPOINT} to start pruning from (it was made by an older "
                f"version). Fix: rerun it (delete the folder), or pass schedule.reuse_unpruned=false to train here.")
        checkpoint = torch.load(initial.file(CHECKPOINT), map_location=device, weights_only=True)
        if checkpoint["history"] and session is not None:     # a channel-pruned start (Pear's pruning.after)
            session.replay(checkpoint["history"])
            if parts.channels_last:
                apply_channels_last(model, device)
        load_unpruned(model, checkpoint["state_dict"])
        for record in initial.read_epochs():
            rundir.append_epoch(record)
        last = initial.read_steps()[-1]     # an unpruned run has one row
        widths = session_widths(session) if session is not None else None
        rows = [parts.with_health(
            {**last, "step": 0, "density": session.density if checkpoint["history"] else 1.0,
             "weight_density": last.get("weight_density", 1.0) if checkpoint["history"] else 1.0,
             "kept_filters": session.kept_filters if session is not None else None}, widths)]
        log.info("starting from the %s run %s (test top-1 %.2f%%)", "channel-pruned" if checkpoint["history"] else
                 "unpruned", initial_run, rows[0]["top1"])
        selection = checkpoint["selection"]
    else:
        t0 = time.perf_counter()
        head_epochs = int(parts.cfg.train.get("head_epochs", 0))
        if head_epochs:       # the ViT runs of the paper's ICLR version: the new head alone first
            with head_only(model):
                parts.train(head_epochs, "head", 0)
        result, final = parts.train(initial_epochs(parts.cfg), "train", 0)
        widths = session_widths(session) if session is not None else None
        rows = [parts.with_health(step_row(0, model, session, None, final, parts.size, time.perf_counter() - t0),
                                  widths)]
        selection = _selection(result)
    parts.record_step(rows, widths)
    save_checkpoint(rundir, model, session, 0, selection)
    return rows, 0, selection


def _prune(parts: Parts, session: PruningSession, rows: list[dict[str, Any]], done_step: int) -> dict | None:
    """Pruning steps after ``done_step``: score, remove, test, recover, record, checkpoint."""
    cfg, model = parts.cfg, parts.model
    sched, t, seed = cfg.schedule, cfg.train, int(cfg.seed)
    by_weights = sched.get("density", "filters") == "weights"
    plan = schedule_plan(session.original_filters, sched.step_fraction, sched.target_density,
                         sched.get("density", "filters"))
    base = rows[0]["params_deployable"] / (rows[0].get("weight_density") or 1.0)
    selection = None
    for step in range(done_step + 1, plan.steps + 1):
        if by_weights and (rows[-1].get("weight_density") or 1.0) <= sched.target_density:
            break
        t0 = time.perf_counter()
        parts.seed_step(step)
        criterion = make_criterion(cfg.pruning.criterion, seed * 1000 + step, parts.mean_std)
        session.step(step, plan, criterion, parts.train_loader, parts.device, sched.score_batches,
                     cfg.pruning.group_reduction, cfg.pruning.get("round_to", 1), cfg.pruning.get("scope", "global"),
                     cfg.pruning.get("normalization"), cfg.pruning.get("max_group_pruning"),
                     list(cfg.pruning.get("ignore") or []))
        if parts.channels_last:     # pruned layers get new (contiguous) weights
            apply_channels_last(model, parts.device)
        before = evaluate(model, parts.test_loader, parts.device, bool(t.amp), parts.channels_last)
        result, final = parts.train(int(sched.recovery_epochs), "recover", step,
                                    lr_scale=float(sched.get("recovery_lr_scale", 1.0)))
        widths = session_widths(session)
        rows.append(parts.with_health(step_row(step, model, session, before["top1"], final, parts.size,
                                               time.perf_counter() - t0, base_deployable=base), widths))
        selection = _selection(result)
        parts.record_step(rows, widths)
        save_checkpoint(parts.rundir, model, session, step, selection)
    return selection


def load_unpruned(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unpruned run's state into ``model``; the block masks and scores that block pruning
    attached (which the unpruned run has not) keep their start values (all kept, zero)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".block_mask", ".block_scores"))]
    if missing or unexpected:
        raise RuntimeError(f"the unpruned run's state does not fit this model: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")


def make_criterion(name: str, seed: int, mean_std: tuple[tuple[float, ...], tuple[float, ...]]):
    """The criterion object of a step: ``random`` is seeded per step, ``lrp`` gets the input bounds
    of the data's normalisation ``(mean, std)`` (for z^β at the first conv)."""
    check_pruning(name)
    if name == "random":
        return CRITERIA[name](seed=seed)
    if name == "lrp":
        return CRITERIA[name](*input_bounds(*mean_std))
    return CRITERIA[name]()


def step_row(step: int, model, session, top1_before: float | None, final, size: tuple[int, int],
             seconds: float, base_deployable: float | None = None) -> dict[str, Any]:
    """One row of steps.csv. MACs (the paper's "FLOPs") at the run's input size and at 32 × 32.
    ``weight_density``: deployable (fused) parameters / those of the unpruned network
    (``base_deployable``), the ViT runs' "pruned weights" (1 at step 0; None where not counted)."""
    params = count_parameters(model)
    weight_density = round(params.deployable / base_deployable, 6) if base_deployable else \
        (1.0 if step == 0 else None)
    try:
        macs_32 = count_macs(model, (32, 32))
    except AssertionError as err:  # a ViT / Swin with a fixed input size: timm asserts the size; nothing else is hidden
        log.debug("no MACs at 32 x 32: %s", err)
        macs_32 = None
    return {"step": step, "density": round(session.density, 6) if session else 1.0,
            "weight_density": weight_density, "kept_filters": session.kept_filters if session else None,
            "top1_before": top1_before, "top1": final.test_top1, "top5": final.test_top5,
            "test_loss": final.test_loss, "val_top1": final.val_top1, "train_loss": final.train_loss,
            "train_top1": final.train_top1, "params_total": params.total, "params_learned": params.trainable,
            "params_deployable": params.deployable, "macs": count_macs(model, size), "macs_32": macs_32,
            "time_s": round(seconds, 2)}


def save_checkpoint(rundir: RunDir, model, session, step: int, selection: dict[str, Any],
                    pear: dict[str, Any] | None = None) -> None:
    """After a completed step (0: the initial training): the state dict and the pruning history
    (safe to torch.load), atomically. Pruned runs resume from it; unpruned ones are started from."""
    history = session.history if session is not None else []
    original = session.original_filters if session is not None else None
    atomic_torch_save({"step": step, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "history": history, "original_filters": original, "selection": selection,
                       **({"pear": pear} if pear is not None else {})},
                      rundir.file(CHECKPOINT))
    if session is not None:
        # the structure and the unit its density counts (files written before this key have channels / filters)
        atomic_write_json(rundir.file(HISTORY), {"structure": session.structure.name, "unit": session.structure.unit,
                                                 "original_filters": original, "steps": history})
