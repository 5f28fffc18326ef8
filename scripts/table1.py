"""Table 1 from the run tree, side by side with the paper: python scripts/table1.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md,tex}, <exp>_vs_paper.{csv,md}, <exp>_claims.md, <exp>_curves.csv and
<exp>_versions.json (the runs' torch versions). Refuses an experiment whose config sets ``report: true``:
its <exp>.{csv,md} belong to the generic per-run report (spa.reporting.report).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.collect import print_report
from spa.reporting.report import report_setting
from spa.reporting.table1 import table1_report
from spa.reporting.widths import widths_outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="table1")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds a cell needs for the table to be final (default: the seeds the experiment "
                             "config sweeps, else 3)")
    args = parser.parse_args()
    if report_setting(args.exp_name) is True:
        print(f"configs/experiment/{args.exp_name}.yaml sets report: true, so its tables are the generic report's "
              f"(python scripts/report.py {args.exp_name}); set report: table1 there for Table 1", file=sys.stderr)
        return 2
    runs = args.results_dir / "runs" / args.exp_name
    return print_report(lambda: {**table1_report(runs, args.results_dir / "tables", args.exp_name, args.seeds),
                                 **widths_outputs(runs, args.results_dir / "figures", args.exp_name)})


if __name__ == "__main__":
    sys.exit(main())
