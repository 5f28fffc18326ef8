"""Latency-targeted against density-targeted pruning at the same measured latency, from the run tree:
python scripts/latency_table.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md} (default EXP_NAME: latency_mini): per learner, the latency-targeted
run's last step beside the density-targeted run's first step measured at or below the same latency.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.collect import print_report
from spa.reporting.latency import latency_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="latency_mini")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    return print_report(lambda: latency_report(args.results_dir / "runs" / args.exp_name,
                                               args.results_dir / "tables", args.exp_name))


if __name__ == "__main__":
    sys.exit(main())
