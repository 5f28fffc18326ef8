"""The learning rate per (dataset, learner) from a validation sweep: python scripts/select_lr.py EXP_NAME

Reads results/runs/EXP_NAME (e.g. experiment=table1_imagenet_mini_lr), writes
results/tables/EXP_NAME.{csv,md} and prints the selected values in the layout of the experiment config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.selection import selected, selection_table, write_selection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name")
    parser.add_argument("--setting", default="optim.lr", help="the swept config key (default optim.lr)")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    try:
        table = selection_table(args.results_dir / "runs" / args.exp_name, args.setting)
    except (FileNotFoundError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    paths = write_selection(table, args.results_dir / "tables", args.exp_name, args.setting)
    print(paths["md"].read_text())
    for dataset, values in selected(table, args.setting).items():
        print(f"{dataset}: {{{', '.join(f'{a}: {v:g}' for a, v in values.items())}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
