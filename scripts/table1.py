"""Table 1 from the run tree, side by side with the paper: python scripts/table1.py [EXP_NAME]

Writes results/tables/<exp>.{csv,md,tex}, <exp>_vs_paper.{csv,md} and <exp>_claims.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting import collect_steps
from spa.reporting.paper import load_table1
from spa.reporting.table1 import swept_seeds, write_table1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", nargs="?", default="table1")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds a cell needs for the table to be final (default: the seeds the experiment "
                             "config sweeps, else 3)")
    args = parser.parse_args()
    seeds = args.seeds or swept_seeds(args.exp_name) or 3
    steps = collect_steps(args.results_dir / "runs" / args.exp_name)
    if steps.empty:
        print(f"no finished runs under {args.results_dir / 'runs' / args.exp_name}", file=sys.stderr)
        return 1
    paths = write_table1(steps, load_table1(), args.results_dir / "tables", args.exp_name, seeds)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
