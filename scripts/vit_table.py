"""The ViT table, claim and figure from the run tree: python scripts/vit_table.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md}, <exp>_runs.csv (one row per run), <exp>_claims.md (the ICLR
version's "+43 points at 75 % pruned weights, 6.8x fewer parameters" recomputed from our runs),
<exp>_versions.json and results/figures/<exp>_weights.{png,pdf} (default EXP_NAME: vit_iclr_mini).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.collect import print_report
from spa.reporting.vit import vit_report
from spa.reporting.widths import widths_outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="vit_iclr_mini")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    runs, figures = args.results_dir / "runs" / args.exp_name, args.results_dir / "figures"
    return print_report(lambda: {**vit_report(runs, args.results_dir / "tables", figures, args.exp_name),
                                 **widths_outputs(runs, figures, args.exp_name)})


if __name__ == "__main__":
    sys.exit(main())
