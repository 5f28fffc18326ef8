"""Rebuild an experiment's tables and figure from its finished runs: python scripts/report.py demo"""
from __future__ import annotations

import argparse
from pathlib import Path

from spa import repo_root
from spa.reporting import experiment_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exp_name", help="experiment name (folder under results/runs)")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    args = parser.parse_args()
    outputs = experiment_report(args.results_dir / "runs" / args.exp_name, args.results_dir, args.exp_name)
    for kind, path in outputs.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
