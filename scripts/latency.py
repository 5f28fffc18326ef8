"""Re-measure a finished run's latency on the runtime it is deployed to:
python scripts/latency.py RUN_DIR [--batch 1] [--repeats 50] [--tolerance 0.005]

Exports the run's deployable network as scripts/export.py does (RUN_DIR/model.onnx, checked against
PyTorch) unless --onnx names an export already written, then times it in onnxruntime (CPU) interleaved with
its backbone unpruned, exported alike, in rounds of one call each until the median of the per-round
ratios is known to --tolerance (a 95 % interval) or --max-seconds have passed; prints both latencies and
the ratio, beside what the run's steps.csv measured at its last step and its schedule.target_latency, and
writes RUN_DIR/latency.json. Time it with nothing else running.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from spa.bench.deployment import exported_latency
from spa.export import export_run
from spa.records import RunDir
from spa.utils import Precision, atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--onnx", type=Path, default=None, help="an export of the run (default: export it now)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50, help="rounds, at least")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.005, help="of the ratio: its 95 %% interval's half-width")
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        onnx_file = args.onnx or export_run(args.run_dir, "onnx")[0]
        result = exported_latency(args.run_dir, onnx_file, args.batch, Precision(
            rounds=args.repeats, warmup=args.warmup, tolerance=args.tolerance, max_seconds=args.max_seconds))
    except (FileNotFoundError, ValueError, RuntimeError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps = RunDir(args.run_dir).read_steps()
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    schedule = config.get("schedule") or {}
    result.update(run_measured=steps[-1].get("latency_measured") if steps else None,
                  target=schedule.get("target_latency") if schedule.get("target") == "latency" else None)
    atomic_write_json(args.run_dir / "latency.json", result)
    target = f"; target {result['target']}, {100 * (result['ratio'] / result['target'] - 1):+.1f} % off it" \
        if result["target"] else ""
    print(f"{args.run_dir}: onnxruntime, batch {args.batch}, {result['threads']} threads: dense "
          f"{result['dense_ms']:.3f} ms, pruned {result['pruned_ms']:.3f} ms, ratio {result['ratio']:.3f} "
          f"± {100 * result['interval']:.1f} % ({result['rounds']} rounds; the run "
          f"measured {result['run_measured']}){target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
