"""Widths heatmaps: what every prunable unit of a run kept after each step (``widths.csv``,
``spa.pruning.widths``), units in network order down, steps across, the kept fraction in colour, so an
emptied layer is one dark row. ``scripts/widths.py`` draws any runs; the report scripts draw one figure
per (criterion, learner) of an experiment, a panel per data set, from its first seed."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from spa.records import SUMMARY, WIDTHS
from spa.reporting.plotting import new_figure

NARROW = 0.05     # rows that end below this kept fraction are named in red: the units a step all but emptied


def read_widths(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / WIDTHS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: only pruned runs (channels, heads, blocks) record widths")
    return pd.read_csv(path)


def _panel(ax, widths: pd.DataFrame, title: str, labels: bool = True):
    units = list(dict.fromkeys(widths["unit"]))                       # network order, as recorded
    steps = sorted(widths["step"].unique())
    kept = widths.assign(fraction=widths["kept"] / widths["original"]).pivot(
        index="unit", columns="step", values="fraction").reindex(index=units, columns=steps)
    image = ax.imshow(kept.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    density = widths.groupby("step")["density"].first().reindex(steps)
    ax.set_xticks(range(len(steps)), [f"{s}\n{d:.2f}" for s, d in zip(steps, density)], fontsize=6)
    ax.set_xlabel("step / density", fontsize=8)
    size = max(3.0, min(7.0, 400.0 / max(1, len(units))))
    ax.set_yticks(range(len(units)), units if labels else [""] * len(units), fontsize=size)
    last = kept.iloc[:, -1].to_numpy(dtype=float)
    for tick, fraction in zip(ax.get_yticklabels(), last):
        if np.isfinite(fraction) and fraction < NARROW:
            tick.set_color("red")
    ax.set_title("\n".join(textwrap.wrap(title, 38)), fontsize=8)
    return image


def widths_figure(panels: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """One heatmap per entry of ``panels`` ({panel title: widths.csv rows}) side by side, as a PNG at ``path``."""
    units = max(len(set(w["unit"])) for w in panels.values())
    shared = len({tuple(dict.fromkeys(w["unit"])) for w in panels.values()}) == 1   # one network: label it once
    width = 2.6 * len(panels) + (2.0 if shared else 2.0 * len(panels)) + 0.8
    fig, axes = new_figure(1, len(panels), (width, max(3.0, 0.11 * units + 1.5)))
    fig.set_layout_engine("constrained")      # room for every panel's unit names
    image = None
    for i, (ax, (name, widths)) in enumerate(zip(axes[0], panels.items())):
        image = _panel(ax, widths, name, labels=not shared or i == 0)
    fig.colorbar(image, ax=list(axes[0]), label="kept / original width", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def first_seed_widths(runs_root: str | Path) -> dict[tuple[str, str], dict[str, Path]]:
    """{(pruning, adapter): {dataset: run dir of its lowest seed}} of the runs under ``runs_root`` with widths."""
    found: dict[tuple[str, str, str], tuple[int, Path]] = {}
    for path in sorted(Path(runs_root).rglob(SUMMARY)):
        if not (path.parent / WIDTHS).is_file():
            continue
        summary = json.loads(path.read_text())
        key = (summary["pruning"], summary["adapter"], summary["dataset"])
        if key not in found or int(summary["seed"]) < found[key][0]:
            found[key] = (int(summary["seed"]), path.parent)
    grouped: dict[tuple[str, str], dict[str, Path]] = {}
    for (pruning, adapter, dataset), (_, run) in sorted(found.items()):
        grouped.setdefault((pruning, adapter), {})[dataset] = run
    return grouped


def experiment_widths(runs_root: str | Path, figures_dir: Path, exp_name: str) -> list[Path]:
    """``<exp>_widths_<pruning>_<adapter>.png`` under ``figures_dir`` for every (criterion, learner) of
    the experiment's pruned runs, a panel per data set (first seed); [] where no run recorded widths."""
    paths = []
    for (pruning, adapter), runs in first_seed_widths(runs_root).items():
        panels = {dataset: read_widths(run) for dataset, run in runs.items()}
        paths.append(widths_figure(panels, figures_dir / f"{exp_name}_widths_{pruning}_{adapter}.png",
                                   f"{exp_name}: kept width per unit, {pruning}, {adapter} (first seed)"))
    return paths


def widths_outputs(runs_root: str | Path, figures_dir: Path, exp_name: str) -> dict[str, Path]:
    """:func:`experiment_widths` as a report's ``{kind: path}`` entries (``widths_<pruning>_<adapter>``)."""
    return {path.stem.replace(f"{exp_name}_", "", 1): path for path in experiment_widths(runs_root, figures_dir,
                                                                                           exp_name)}
