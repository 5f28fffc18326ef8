"""The Pear table, effects and figure from the run tree: python scripts/pear_table.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md}, <exp>_effects.csv (sharing and the checkpoint, paired by seed),
<exp>_runs.csv (one row per run), <exp>_after_channels.csv (Pear after channel pruning, where run),
<exp>_versions.json and results/figures/<exp>_params.{png,pdf} (default EXP_NAME: pear_mini).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.collect import print_report
from spa.reporting.pear import pear_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="pear_mini")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    return print_report(lambda: pear_report(args.results_dir / "runs" / args.exp_name, args.results_dir / "tables",
                                            args.results_dir / "figures", args.exp_name))


if __name__ == "__main__":
    sys.exit(main())
