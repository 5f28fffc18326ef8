"""Read the run tree: every finished run's ``summary.json`` (and ``epochs.jsonl``) into pandas."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from spa.records import EPOCHS, STEPS, SUMMARY

RUN_COLUMNS = ["exp_name", "dataset", "num_classes", "backbone", "adapter", "pruning", "seed", "weights", "epochs",
               "density", "test_top1", "test_top5", "val_top1", "params_total", "params_trainable", "wall_time_s",
               "device", "config_hash", "run_dir"]


def _row(summary: dict) -> dict:
    return {
        **{k: summary[k] for k in ("exp_name", "dataset", "backbone", "adapter", "pruning", "seed", "epochs",
                                   "wall_time_s", "device", "config_hash", "run_dir")},
        "weights": summary["weights"]["source"], "num_classes": summary["data"]["num_classes"],
        "density": summary["metrics"].get("density", 1.0),
        "test_top1": summary["metrics"]["test_top1"], "test_top5": summary["metrics"]["test_top5"],
        "val_top1": summary["metrics"].get("val_top1"),
        "params_total": summary["params"]["total"], "params_trainable": summary["params"]["trainable"],
    }


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (unfinished runs have no summary and are left out)."""
    rows = [_row(json.loads(p.read_text())) for p in sorted(Path(root).rglob(SUMMARY))]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def collect_epochs(root: str | Path) -> pd.DataFrame:
    """One row per epoch of every finished run under ``root``, with the run's identifying columns."""
    frames = []
    for path in sorted(Path(root).rglob(SUMMARY)):
        summary = json.loads(path.read_text())
        lines = (path.parent / EPOCHS).read_text().splitlines() if (path.parent / EPOCHS).is_file() else []
        epochs = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
        if epochs.empty:
            continue
        for key in ("dataset", "backbone", "adapter", "pruning", "seed"):
            epochs[key] = summary[key]
        epochs["num_classes"] = summary["data"]["num_classes"]
        frames.append(epochs)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_steps(root: str | Path) -> pd.DataFrame:
    """One row per pruning step (``steps.csv``) of every finished run under ``root``."""
    frames = []
    for path in sorted(Path(root).rglob(SUMMARY)):
        steps = path.parent / STEPS
        if not steps.is_file():
            continue
        summary = json.loads(path.read_text())
        frame = pd.read_csv(steps)
        for key in ("dataset", "backbone", "adapter", "pruning", "seed"):
            frame[key] = summary[key]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
