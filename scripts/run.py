"""Entry point: python scripts/run.py dataset=X backbone=Y adapter=Z pruning=W seed=N [-m for sweeps].

shard=i/n (with -m) runs only the sweep's jobs whose index is i modulo n, so n machines can split a
sweep; every machine writes to the same run tree layout, and re-running skips finished runs.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import spa  # noqa: F401  (registers the config resolvers)
from spa import pipeline
from spa.reporting import experiment_report
from spa.settings import SettingError

log = logging.getLogger(__name__)


def in_shard(shard: str | None, job_num: int) -> bool:
    if not shard:
        return True
    try:
        index, count = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard={shard!r} must look like i/n, e.g. shard=0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"shard={shard!r}: i must be in 0..n-1")
    return job_num % count == index


def report(cfg: DictConfig) -> dict[str, Path]:
    """``report: true`` (or a report name): the experiment's tables and figures from its run tree,
    rebuilt after each run so a sweep's table grows as its runs finish."""
    if not cfg.get("report"):
        return {}
    outputs = experiment_report(Path(cfg.paths.runs_dir) / cfg.exp_name, Path(cfg.paths.results_dir), cfg.exp_name,
                                report=cfg.report)
    for kind, path in outputs.items():
        log.info("%s: %s", kind, path)
    return outputs


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """Hydra makes the run directory before the job starts: a run refused on a setting leaves none."""
    path, stop = path.resolve(), stop.resolve()
    while path != stop and stop in path.parents and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    job_num = HydraConfig.get().job.get("num") or 0
    if not in_shard(cfg.get("shard"), job_num):
        log.info("job %d is not in shard %s: skipped", job_num, cfg.shard)
        return None
    try:
        summary = pipeline.run(cfg)
    except SettingError as err:     # a wrong value on the command line: one line, no traceback
        remove_empty_dirs(Path(cfg.paths.run_dir), Path(cfg.paths.runs_dir))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    report(cfg)
    return float(summary["metrics"]["test_top1"])


if __name__ == "__main__":
    main()
