"""What the evidence says: python scripts/evidence.py [--tables results/tables]

One row per claim of the three papers (SPA Table 1 at 30 % and 10 %, the ICLR ViT claim, block SPA, Pear)
from the committed tables: ours, the paper's, whether our runs were healthy, and one plain sentence.
Writes results/tables/evidence.{csv,md} (make readme puts the Markdown in the README).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spa import repo_root
from spa.reporting.evidence import evidence_table, write_evidence
from spa.reporting.paper import load_table1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=repo_root() / "results" / "tables")
    args = parser.parse_args()
    table = evidence_table(args.tables, load_table1())
    if table.empty:
        print(f"no claim tables under {args.tables}", file=sys.stderr)
        return 1
    paths = write_evidence(table, args.tables)
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
