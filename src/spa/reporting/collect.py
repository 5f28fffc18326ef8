"""Read the run tree: every finished run's ``summary.json`` (and ``epochs.jsonl``) into pandas, with the torch
version each run recorded (``torch`` column), so every table written from them can state what produced it."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from spa.metrics.collapse import LEGEND, Chance
from spa.records import STEPS, SUMMARY, RunDir
from spa.utils import atomic_write_text

RUN_COLUMNS = ["exp_name", "dataset", "num_classes", "backbone", "adapter", "pruning", "seed", "weights", "epochs",
               "density", "test_top1", "test_top5", "val_top1", "params_total", "params_trainable", "wall_time_s",
               "device", "config_hash", "run_dir", "torch", "collapsed"]


def _row(summary: dict) -> dict:
    return {
        **{k: summary[k] for k in ("exp_name", "dataset", "backbone", "adapter", "pruning", "seed", "epochs",
                                   "wall_time_s", "device", "config_hash", "run_dir")},
        "weights": summary["weights"]["source"], "num_classes": summary["data"]["num_classes"],
        "density": summary["metrics"].get("density", 1.0),
        "test_top1": summary["metrics"]["test_top1"], "test_top5": summary["metrics"]["test_top5"],
        "val_top1": summary["metrics"].get("val_top1"),
        "params_total": summary["params"]["total"], "params_trainable": summary["params"]["trainable"],
        "torch": _torch(summary), "collapsed": run_collapsed(summary),
    }


def run_collapsed(summary: dict) -> bool | None:
    """Whether a run's final test top-1 is a collapse (spa.metrics.collapse) by the majority-class share its
    summary recorded; None for runs from before that record."""
    data = summary.get("data") or {}
    if data.get("majority") is None:
        return None
    return Chance(float(data["majority"]), int(data["test"])).collapsed(summary["metrics"]["test_top1"])


def flagged(value: Any) -> bool:
    """Whether a ``collapsed`` value says collapsed: True (Python's or numpy's) or "True" as a CSV holds it;
    None, NaN (a run from before the flag, a missing cell) and False do not."""
    return value is not None and not (isinstance(value, float) and value != value) and \
        (value is True or str(value) == "True")


def collapse_legend(collapsed: pd.Series) -> str:
    """The legend line under a table with collapsed cells (spa.metrics.collapse), else nothing."""
    return f"\n{LEGEND}.\n" if any(flagged(v) for v in collapsed) else ""


def any_collapsed(values: pd.Series) -> bool:
    """A cell over seeds is collapsed when any of its runs is (unknowns count as not)."""
    return any(flagged(v) for v in values)


def _torch(summary: dict) -> str | None:
    """The torch version a run recorded in ``summary.json`` (``versions.torch``), None where absent."""
    return (summary.get("versions") or {}).get("torch")


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (unfinished runs have no summary and are left out)."""
    rows = [_row(json.loads(p.read_text())) for p in sorted(Path(root).rglob(SUMMARY))]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


RUN_KEYS = ("dataset", "backbone", "adapter", "pruning", "seed")


def _per_run(root: str | Path, read: Callable[[RunDir], pd.DataFrame],
             extra: Callable[[dict], dict] = lambda summary: {}) -> pd.DataFrame:
    """``read`` of every finished run under ``root``, each row tagged with its run's identifying
    columns (and ``extra(summary)``), concatenated."""
    frames = []
    for path in sorted(Path(root).rglob(SUMMARY)):
        frame = read(RunDir(path.parent))
        if frame.empty:
            continue
        summary = json.loads(path.read_text())
        frames.append(frame.assign(**{k: summary[k] for k in RUN_KEYS}, **extra(summary)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_epochs(root: str | Path) -> pd.DataFrame:
    """One row per epoch of every finished run under ``root``, with the run's identifying columns."""
    return _per_run(root, lambda run: pd.DataFrame(run.read_epochs()),
                    extra=lambda summary: {"num_classes": summary["data"]["num_classes"]})


def collect_steps(root: str | Path) -> pd.DataFrame:
    """One row per pruning step (``steps.csv``) of every finished run under ``root``."""
    return _per_run(root, lambda run: pd.read_csv(run.file(STEPS)) if run.file(STEPS).is_file() else pd.DataFrame(),
                    extra=lambda summary: {"torch": _torch(summary)})


def torch_versions(frame: pd.DataFrame) -> list[str]:
    """The distinct torch versions of the runs behind ``frame`` (its ``torch`` column), sorted."""
    return sorted({str(v) for v in frame["torch"].dropna()}) if "torch" in frame else []


def versions_line(versions: list[str]) -> str:
    """``torch 2.14.1`` (every version where runs disagree): the line above each Markdown table."""
    return f"torch {', '.join(versions)}" if versions else "torch not recorded"


MACHINE_KEYS = ("cpu", "cpu_capability", "onednn_max_cpu_isa", "mkl_cbwr", "threads")   # spa.utils.machine_record


def run_machines(root: str | Path) -> dict[str, Any]:
    """The machines the finished runs under ``root`` ran on, as their ``summary.json`` recorded them
    (CPU model, torch's and oneDNN's kernel sets, threads: what float32 results depend on), each once,
    with how many runs ran there; runs from before that record was kept are counted as not recorded."""
    seen: dict[str, dict[str, Any]] = {}
    missing = 0
    for path in sorted(Path(root).rglob(SUMMARY)):
        versions = json.loads(path.read_text()).get("versions") or {}
        if "cpu_capability" not in versions:
            missing += 1
            continue
        machine = {k: versions.get(k) for k in MACHINE_KEYS}
        entry = seen.setdefault(json.dumps(machine, sort_keys=True), {**machine, "runs": 0})
        entry["runs"] += 1
    return {"machines": list(seen.values()), "runs_without_machine_record": missing}


def write_versions(path: Path, versions: list[str], machines: dict[str, Any] | None = None) -> Path:
    """The sidecar ``<name>_versions.json`` of an experiment's CSV tables, which stay plain CSV:
    ``{"torch": [...], "machines": [...], ...}``, the torch versions of the runs they were built from
    and the machines and kernel sets the runs ran on (:func:`run_machines` of the runs' root)."""
    record = {"torch": versions, **(machines if machines is not None else {"machines": []})}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def print_report(write: Callable[[], dict[str, Path]]) -> int:
    """What a report script does with ``write()`` (which returns {kind: path}, ``md`` among them):
    prints the Markdown table and every file written, exit status 0; a run tree without the runs it
    needs (``FileNotFoundError``) is one line on stderr, exit status 1."""
    try:
        paths = write()
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
