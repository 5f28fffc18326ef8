"""Rebuild an experiment's tables and figure from its finished runs: python scripts/report.py demo

The layout of results/tables/<exp>.{csv,md} follows the experiment config's ``report`` (``table1``: the
paper's Table 1, as scripts/table1.py writes it). Refuses an experiment whose config sets ``report: false``:
its tables come from a script after the sweep (scripts/table1.py or scripts/select_lr.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting import experiment_report
from spa.reporting.report import report_setting


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", help="experiment name (folder under results/runs)")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    if report_setting(args.exp_name) is False:
        print(f"configs/experiment/{args.exp_name}.yaml sets report: false: its tables come from the script its "
              f"header names (scripts/table1.py or scripts/select_lr.py), not from this one", file=sys.stderr)
        return 2
    outputs = experiment_report(args.results_dir / "runs" / args.exp_name, args.results_dir, args.exp_name)
    for kind, path in outputs.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
