"""The block-SPA table and figures from the run tree: python scripts/block_table.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md}, <exp>_vs_fine_pruning.csv, <exp>_steps.csv, <exp>_crop.csv (the final
models cropped: channels no layer reads removed, MACs and CPU latency), <exp>_versions.json and
results/figures/<exp>_{density,params}_<dataset>.{png,pdf} (default EXP_NAME: block_spa_mini).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.blocks import block_report
from spa.reporting.collect import print_report
from spa.reporting.widths import widths_outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="block_spa_mini")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    parser.add_argument("--latency-repeats", type=int, default=10,
                        help="timed forwards of each final model, dense and cropped (0: MACs only)")
    args = parser.parse_args()
    runs, figures = args.results_dir / "runs" / args.exp_name, args.results_dir / "figures"
    return print_report(lambda: {**block_report(runs, args.results_dir / "tables", figures, args.exp_name,
                                                args.latency_repeats),
                                 **widths_outputs(runs, figures, args.exp_name)})


if __name__ == "__main__":
    sys.exit(main())
