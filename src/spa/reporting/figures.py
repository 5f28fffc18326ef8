"""Figures drawn from tables only (never from the runs): Figure 6 of the paper (accuracy vs learned
parameters, log x, and vs FLOPs; one panel per criterion; one line per learner) and accuracy vs
density per dataset with a ±std band, from ``<exp>_curves.csv`` written by ``spa.reporting.table1``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from spa.reporting.plotting import new_figure, save_figure
from spa.reporting.table1 import LABELS as TABLE_LABELS
from spa.reporting.table1 import LEARNING_ORDER, PRUNING_ORDER

LABELS = {**TABLE_LABELS, "finetune": "Fine-pruning"}   # every curve here is pruned


def _ordered(values, order) -> list:
    present = list(dict.fromkeys(values))
    return sorted(present, key=lambda v: order.index(v) if v in order else len(order))


def figure6(curves: pd.DataFrame, dataset: str, path_stem: Path) -> list[Path]:
    """Two rows (x = learned parameters, log; x = FLOPs at 32 px) × one column per criterion."""
    part = curves[curves["dataset"] == dataset]
    criteria = _ordered(part["pruning"], PRUNING_ORDER)
    fig, axes = new_figure(2, len(criteria), (3.6 * len(criteria), 6.4))
    for col, criterion in enumerate(criteria):
        for learning in _ordered(part["learning"], LEARNING_ORDER):
            line = part[(part["pruning"] == criterion) & (part["learning"] == learning)]
            for row, x in enumerate(("params_k", "flops_m")):
                axes[row][col].plot(line[x], line["top1"], marker="o", ms=3, label=LABELS.get(learning, learning))
        axes[0][col].set_xscale("log")
        axes[0][col].set_title(LABELS.get(criterion, criterion), fontsize=10)
        axes[0][col].set_xlabel("learned parameters (K, log)")
        axes[1][col].set_xlabel("FLOPs (M, 32 × 32)")
        for row in (0, 1):
            axes[row][col].set_ylabel(f"{LABELS.get(dataset, dataset)} top-1 (%)")
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path_stem)


def density_figure(curves: pd.DataFrame, dataset: str, path_stem: Path) -> list[Path]:
    """Accuracy vs density, one panel per criterion, mean line with ±std band over seeds."""
    part = curves[curves["dataset"] == dataset]
    criteria = _ordered(part["pruning"], PRUNING_ORDER)
    fig, axes = new_figure(1, len(criteria), (3.6 * len(criteria), 3.4))
    for ax, criterion in zip(axes[0], criteria):
        for learning in _ordered(part["learning"], LEARNING_ORDER):
            line = part[(part["pruning"] == criterion) & (part["learning"] == learning)]
            x = 100 * line["density"]
            ax.plot(x, line["top1"], marker="o", ms=3, label=LABELS.get(learning, learning))
            ax.fill_between(x, line["top1"] - line["top1_std"], line["top1"] + line["top1_std"], alpha=0.2)
        ax.invert_xaxis()
        ax.set_title(LABELS.get(criterion, criterion), fontsize=10)
        ax.set_xlabel("density (%)")
        ax.set_ylabel(f"{LABELS.get(dataset, dataset)} top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path_stem)


def write_figures(curves_csv: str | Path, out_dir: str | Path, name: str) -> list[Path]:
    """Per dataset: ``<name>_figure6_<dataset>`` and ``<name>_density_<dataset>`` (PNG and PDF)."""
    curves = pd.read_csv(curves_csv)
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for dataset in dict.fromkeys(curves["dataset"]):
        paths += figure6(curves, dataset, out_dir / f"{name}_figure6_{dataset}")
        paths += density_figure(curves, dataset, out_dir / f"{name}_density_{dataset}")
    return paths
