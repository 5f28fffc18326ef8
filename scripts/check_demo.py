"""CI check: the demo's transfer run finished and its accuracy is clearly above chance.

python scripts/check_demo.py RESULTS_DIR [--min-ratio 2.0]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--min-ratio", type=float, default=2.0, help="top-1 must exceed this many times chance")
    args = parser.parse_args()
    summaries = sorted((args.results_dir / "runs" / "demo").rglob("summary.json"))
    runs = [json.loads(p.read_text()) for p in summaries]
    for s in runs:
        if s["pruning"] != "none":
            print(f"demo {s['dataset']} {s['adapter']} pruned ({s['pruning']}) to density "
                  f"{s['metrics']['density']:.2f}: test top-1 {s['metrics']['test_top1']:.2f}% (reported, not checked)")
    transfer = [s for s in runs if s["base_run"] and s["pruning"] == "none"]
    if not transfer:
        print(f"no finished demo transfer run under {args.results_dir}/runs/demo", file=sys.stderr)
        return 1
    ok = True
    for s in transfer:
        chance = 100.0 / s["data"]["num_classes"]
        top1 = s["metrics"]["test_top1"]
        verdict = "ok" if top1 >= args.min_ratio * chance else "TOO LOW"
        ok &= verdict == "ok"
        print(f"demo {s['dataset']} {s['adapter']} seed {s['seed']}: test top-1 {top1:.2f}% (chance {chance:.0f}%) {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
