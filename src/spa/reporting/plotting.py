"""Figure helpers shared by every report: a figure outside pyplot, its axes styled alike, saved as
PNG and PDF."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def style_axes(ax, title: str, xlabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def new_figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure and its 2-D array of axes, outside pyplot: no global state, no display backend
    (so the library draws the same files from scripts and inside notebooks)."""
    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path_stem: Path) -> list[Path]:
    """PNG and PDF of ``fig`` at ``path_stem``."""
    fig.tight_layout()
    paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path, dpi=130)
    return paths
