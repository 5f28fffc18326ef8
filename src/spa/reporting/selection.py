"""Hyperparameter selection on a validation split: which value of one setting (e.g. ``optim.lr``)
gave each (dataset, learner) its best held-out top-1. Reads the runs' ``config.yaml`` for the
setting and ``summary.json`` for the validation accuracy; the test split plays no part."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from spa.records import RunDir
from spa.reporting.collect import collect_runs, run_machines, torch_versions, versions_line, write_versions
from spa.reporting.report import label
from spa.utils import atomic_write_text


def _setting(run_dir: str, dotted: str):
    value = RunDir(run_dir).read_config()
    for key in dotted.split("."):
        value = value[key]
    return value


def selection_table(root: str | Path, setting: str = "optim.lr") -> pd.DataFrame:
    """One row per (dataset, adapter, value of ``setting``): validation top-1 (mean over seeds), and
    ``selected`` on the best value of each (dataset, adapter); ties go to the smaller value. The runs'
    torch versions ride along in ``attrs["torch"]`` for the tables' header."""
    runs = collect_runs(root)
    if runs.empty:
        raise FileNotFoundError(f"no finished runs under {root}")
    if runs["val_top1"].isna().any():
        bad = runs.loc[runs["val_top1"].isna(), "run_dir"].tolist()
        raise ValueError(f"runs without a validation split (dataset.val_fraction=0): {bad[:3]}")
    runs = runs.assign(value=[_setting(d, setting) for d in runs["run_dir"]])
    table = runs.groupby(["dataset", "adapter", "value"], sort=True).agg(
        val_top1=("val_top1", "mean"), seeds=("seed", "nunique"), epochs=("epochs", "first")).reset_index()
    best = table.sort_values(["val_top1", "value"], ascending=[False, True]).drop_duplicates(["dataset", "adapter"])
    table["selected"] = table.index.isin(best.index)
    table = table.rename(columns={"value": setting})
    table.attrs["torch"] = torch_versions(runs)
    table.attrs["machines"] = run_machines(root)
    return table


def selected(table: pd.DataFrame, setting: str = "optim.lr") -> dict[str, dict[str, float]]:
    """{dataset: {adapter: selected value}}."""
    rows = table[table["selected"]]
    return {d: dict(zip(part["adapter"], part[setting])) for d, part in rows.groupby("dataset")}


def write_selection(table: pd.DataFrame, out_dir: str | Path, name: str, setting: str = "optim.lr") -> dict[str, Path]:
    """``<name>.{csv,md}`` and ``<name>_versions.json`` (the torch versions of the runs, which the
    Markdown states above the table) under ``out_dir``."""
    out_dir = Path(out_dir)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    versions = table.attrs.get("torch", [])
    atomic_write_text(csv, table.to_csv(index=False))
    write_versions(out_dir / f"{name}_versions.json", versions, table.attrs.get("machines"))
    wide = table.pivot(index=["dataset", "adapter"], columns=setting, values="val_top1")
    chosen = table[table["selected"]].set_index(["dataset", "adapter"])[setting]
    rows = pd.DataFrame({"data": [label(d) for d, _ in wide.index], "learning": [label(a) for _, a in wide.index]})
    for value in wide.columns:
        rows[f"{setting}={value:g}"] = [f"{v:.2f}" if pd.notna(v) else "" for v in wide[value]]
    rows["selected"] = [f"{chosen[k]:g}" for k in wide.index]
    seeds, epochs = int(table["seeds"].max()), int(table["epochs"].max())
    text = (f"Validation top-1 (%) on the held-out part of the training images, {epochs} epochs, {seeds} seed(s); "
            f"the highest per row is selected (ties: the smaller value). The test split is not read.\n\n"
            f"{versions_line(versions)}\n\n" + rows.to_markdown(index=False, disable_numparse=True) + "\n")
    atomic_write_text(md, text)
    return {"csv": csv, "md": md}
