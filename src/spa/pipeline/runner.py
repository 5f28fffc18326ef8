"""Running a config: its base stage (if any), the chain of runs it starts from, then itself; each
run skipped when finished with the same config and data, refused when its config changed, else
built, run by its method and recorded."""
from __future__ import annotations

import copy
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from spa.data.fingerprint import fingerprint
from spa.loggers import make_logger
from spa.pipeline.checks import check_settings
from spa.pipeline.configs import BASE_WEIGHTS, base_config, setting
from spa.pipeline.methods import method_of
from spa.pipeline.parts import Data, build_data, build_parts
from spa.pipeline.stages import start_chain
from spa.pipeline.writer import write_records
from spa.records import CHECKPOINT, FINGERPRINT, SUMMARY, RunDir, RunSummary

log = logging.getLogger(__name__)

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
    skip_starts = RunDir(cfg.paths.run_dir).finished and not setting(cfg, "overwrite")
    initial = None if skip_starts else start_run(cfg, base_dir)
    return run_single(cfg, base_run=base_dir, initial_run=initial)


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


def run_single(cfg: DictConfig, base_run: str | None = None, initial_run: str | None = None) -> dict[str, Any]:
    """One run: skip if finished with this config on the same data, refuse a changed config, else
    train and record. Its settings were checked by :func:`run`; its data is built (and checked)
    here, before the run directory is written."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    built = build_data(cfg, base_run)
    resolved[FINGERPRINT] = fingerprint(built.bundle, cfg.dataset.root)
    rundir = RunDir(cfg.paths.run_dir)
    with rundir.lock():
        status, done = rundir.prepare(resolved, overwrite=bool(setting(cfg, "overwrite")))
        if status == "done":
            log.info("skipping %s: finished with the same config and data (test top-1 %.2f%%)",
                     rundir.path, done["metrics"]["test_top1"])
            return done
        observer = make_logger(OmegaConf.to_container(cfg.logger) if cfg.get("logger") else None,
                               rundir.path, Path(cfg.paths.runs_dir))
        if observer is not None:
            rundir.observers.append(observer)
        try:
            with rundir.logging_to_file():
                summary = execute(cfg, resolved, rundir, base_run, status, initial_run, built)
        finally:
            if observer is not None:
                observer.close()
                rundir.observers.remove(observer)
    return summary.to_dict()


def execute(cfg: DictConfig, resolved: dict[str, Any], rundir: RunDir, base_run: str | None,
             status: str, initial_run: str | None, built: Data) -> RunSummary:
    """Build the parts, run the method, write the records."""
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    log.info("run %s", rundir.path)
    method = method_of(cfg)
    parts = build_parts(cfg, rundir, built, base_run, method.channel_session(cfg))
    rows, selection = method.run(parts, status, initial_run)
    return write_records(parts, resolved, rows, selection, base_run, started, t0)
