"""Latency-targeted against density-targeted pruning at the same measured latency (experiment
latency_mini, scripts/latency_table.py): per (data set, learner, seed), the latency-targeted run's
last step beside the density-targeted run's first step measured at or below the same latency."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from spa.records import RunDir
from spa.utils import atomic_write_text

COLUMNS = ["dataset", "learner", "seed", "schedule", "step", "latency_measured", "latency_measured_ms",
           "latency_pred", "top1", "top1_unpruned", "density", "macs_ratio", "collapsed"]


def _row(steps: list[dict[str, Any]], state: dict[str, Any], schedule: str, **keys: Any) -> dict[str, Any]:
    return {**keys, "schedule": schedule, "step": state["step"], "latency_measured": state.get("latency_measured"),
            "latency_measured_ms": state.get("latency_measured_ms"), "latency_pred": state.get("latency_pred"),
            "top1": state["top1"], "top1_unpruned": steps[0]["top1"], "density": state["density"],
            "macs_ratio": state["macs"] / steps[0]["macs"], "collapsed": state.get("collapsed")}


def comparison(exp_dir: str | Path, latency_folder: str = "weight_latency", density_folder: str = "weight") -> \
        pd.DataFrame:
    """Two or three rows per finished latency-targeted run under ``exp_dir``
    (<dataset>/<backbone>/<latency_folder>/<learner>/seed_<n>): its last step, and the density-targeted
    run's (``density_folder``) first step measured at or below that latency, or its last step marked
    ``not reached``. FileNotFoundError where no pair is finished."""
    rows = []
    for run in sorted(Path(exp_dir).glob(f"*/*/{latency_folder}/*/seed_*")):
        dataset, learner, seed = run.parts[-5], run.parts[-2], run.name
        partner = run.parents[2] / density_folder / learner / seed
        if not (RunDir(run).finished and RunDir(partner).finished):
            continue
        by_latency, by_density = RunDir(run).read_steps(), RunDir(partner).read_steps()
        reached = by_latency[-1]
        keys = {"dataset": dataset, "learner": learner, "seed": int(seed.removeprefix("seed_"))}
        rows.append(_row(by_latency, reached, "latency", **keys))
        hit = next((s for s in by_density if s.get("latency_measured") is not None
                    and s["latency_measured"] <= reached["latency_measured"]), None)
        rows.append(_row(by_density, hit or by_density[-1], "density" if hit else "density (not reached)", **keys))
    if not rows:
        raise FileNotFoundError(f"no finished pair of a latency-targeted ({latency_folder}) and a density-targeted "
                                f"({density_folder}) run under {exp_dir}: run make latency-mini first")
    return pd.DataFrame(rows)[COLUMNS]


def latency_report(exp_dir: str | Path, tables_dir: str | Path, name: str) -> dict[str, Path]:
    """<name>.csv and .md from :func:`comparison`."""
    table = comparison(exp_dir)
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    out = {"csv": tables_dir / f"{name}.csv", "md": tables_dir / f"{name}.md"}
    atomic_write_text(out["csv"], table.round(4).to_csv(index=False))
    shown = table.assign(
        latency=[f"{m:.3f} ({ms:.2f} ms)" for m, ms in zip(table["latency_measured"], table["latency_measured_ms"])],
        top1=[f"{t:.2f}" for t in table["top1"]], unpruned=[f"{t:.2f}" for t in table["top1_unpruned"]],
        density=[f"{d:.1%}" for d in table["density"]], macs=[f"{m:.3f}" for m in table["macs_ratio"]])
    shown = shown[["dataset", "learner", "seed", "schedule", "step", "latency", "top1", "unpruned", "density",
                   "macs", "collapsed"]].rename(columns={
        "latency": "latency, measured (of dense)", "top1": "test top-1 (%)", "unpruned": "unpruned top-1 (%)",
        "density": "filter density", "macs": "MACs ratio"})
    atomic_write_text(out["md"], shown.to_markdown(index=False, disable_numparse=True) + "\n")
    return out
