"""Figures from the Table 1 tables: python scripts/figures.py [EXP_NAME] (needs scripts/table1.py first)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.figures import write_figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="table1")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    curves = args.results_dir / "tables" / f"{args.exp_name}_curves.csv"
    if not curves.is_file():
        print(f"{curves} not found: run `make table1 T1={args.exp_name}` (scripts/table1.py) first", file=sys.stderr)
        return 1
    for path in write_figures(curves, args.results_dir / "figures", args.exp_name):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
