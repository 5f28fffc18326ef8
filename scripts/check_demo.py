"""CI check of `make demo`: its transfer runs finished clearly above chance, and the table it just
wrote is the committed one (the demo is deterministic on CPU, so a difference means the committed
table, and the README that embeds it, are stale).

python scripts/check_demo.py RESULTS_DIR [--min-ratio 2.0] [--expected results/tables/demo.csv]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# every column of tables/demo.csv but the wall time, which no two machines share
VOLATILE = ("wall_time_s",)


def transfer_ok(runs: list[dict], min_ratio: float) -> bool:
    for s in runs:
        if s["pruning"] != "none":
            print(f"demo {s['dataset']} {s['adapter']} pruned ({s['pruning']}) to density "
                  f"{s['metrics']['density']:.2f}: test top-1 {s['metrics']['test_top1']:.2f}% (reported, not checked)")
    transfer = [s for s in runs if s["pruning"] == "none" and s["weights"]["source"] != "none"]
    if not transfer:
        print("no finished demo transfer run", file=sys.stderr)
        return False
    ok = True
    for s in transfer:
        chance = 100.0 / s["data"]["num_classes"]
        top1 = s["metrics"]["test_top1"]
        verdict = "ok" if top1 >= min_ratio * chance else "TOO LOW"
        ok &= verdict == "ok"
        print(f"demo {s['dataset']} {s['adapter']} seed {s['seed']}: test top-1 {top1:.2f}% "
              f"(chance {chance:.0f}%) {verdict}")
    return ok


def table_differences(generated: Path, expected: Path) -> list[str]:
    """Rows of the generated demo table that differ from the committed one (time left out)."""
    new, old = (pd.read_csv(p, dtype=str).drop(columns=list(VOLATILE), errors="ignore") for p in (generated, expected))
    if list(new.columns) != list(old.columns) or len(new) != len(old):
        return [f"columns or row count differ: {list(new.columns)} x {len(new)} vs {list(old.columns)} x {len(old)}"]
    return [
        f"row {i}: generated {dict(new.iloc[i])} vs committed {dict(old.iloc[i])}"
        for i in range(len(new))
        if not new.iloc[i].equals(old.iloc[i])
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--min-ratio", type=float, default=2.0, help="top-1 must exceed this many times chance")
    parser.add_argument(
        "--expected",
        type=Path,
        default=REPO / "results" / "tables" / "demo.csv",
        help="the committed demo table the generated one must equal (time excepted)",
    )
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in sorted((args.results_dir / "runs" / "demo").rglob("summary.json"))]
    ok = transfer_ok(runs, args.min_ratio)
    generated = args.results_dir / "tables" / "demo.csv"
    if not generated.is_file():
        print(f"{generated} was not written", file=sys.stderr)
        return 1
    diffs = table_differences(generated, args.expected)
    if diffs:
        print(f"the demo table {generated} differs from the committed {args.expected}:", file=sys.stderr)
        for line in diffs:
            print("  " + line, file=sys.stderr)
        print(
            'Fix: run `make demo ARGS="dataset.root=../shared/data/cifar10-subset"` and `make readme`, and commit '
            "results/tables/demo.* and README.md with the change that moved the numbers.",
            file=sys.stderr,
        )
        return 1
    print(f"demo table equals {args.expected} (time excepted)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
