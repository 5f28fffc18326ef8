"""Per-layer widths of pruned runs as heatmaps: python scripts/widths.py RUN_DIR [RUN_DIR ...] [--out PATH]

Reads each run's widths.csv (every prunable unit's original and kept width after every step) and draws
one panel per run: units in network order down, steps (and their density) across, the kept fraction in
colour; units that end below 5 % of their width are named in red. Writes --out (default: widths.png in
the first run's directory) and prints the narrowest units of each run's last step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa.reporting.widths import read_widths, widths_figure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--show", type=int, default=5, help="narrowest units printed per run (default 5)")
    args = parser.parse_args()
    try:
        # a run's name in its panel: runs/<exp>/<dataset>/<backbone>/<pruning>/<adapter>/seed_<n> from <exp> on
        panels = {"/".join(run.resolve().parts[-6:]): read_widths(run) for run in args.runs}
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for run, widths in panels.items():
        last = widths[widths["step"] == widths["step"].max()]
        last = last.assign(fraction=last["kept"] / last["original"]).sort_values("fraction", kind="stable")
        print(f"{run}: step {int(last['step'].iloc[0])}, density {last['density'].iloc[0]:.3f}; narrowest units:")
        for row in last.head(args.show).itertuples():
            print(f"  {row.unit:<40} {row.kind:<8} {row.kept:>6} / {row.original:<6} ({row.fraction:.3f})")
    out = args.out or args.runs[0] / "widths.png"
    print(widths_figure(panels, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
