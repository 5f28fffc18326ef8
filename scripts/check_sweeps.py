"""Does every committed table come from its make target alone? python scripts/check_sweeps.py [--tables DIR]

For each committed table (spa.reporting.sweeps.COMMITTED: the demo, Table 1 mini and its ImageNet
version with its learning-rate selection, block SPA, Pear, ViT), lists the runs its make target's
sweeps launch (``make -n``, Hydra's sweep expansion, each job's start runs; nothing is trained) and
prints every committed row no run writes and every run with no row. Exit status 1 when any.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.sweeps import COMMITTED, check_committed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=repo_root() / "results" / "tables")
    args = parser.parse_args()
    problems = check_committed(args.tables)
    for line in problems:
        print(line, file=sys.stderr)
    checked = [s.table for s in COMMITTED if (args.tables / s.table).is_file()]
    print(f"{len(checked)} committed tables checked against their make targets ({', '.join(checked)}): "
          f"{len(problems) or 'no'} mismatch{'es' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
