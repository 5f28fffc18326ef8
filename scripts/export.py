"""Export a finished run's deployable network: python scripts/export.py RUN_DIR [--format onnx|exported|torchscript]

Writes RUN_DIR/model.onnx (or .pt2, .ts; --out PATH elsewhere) with a dynamic batch and the run's classes,
input size and normalisation in the file's metadata (and in a readable <file>.json beside it), after
checking that the file gives PyTorch's logits (max |difference| <= 1e-4) on a batch of the run's own test
images when its data is at hand (else a seeded random batch). scripts/predict.py reads the file back.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spa.export import FORMATS, export_run


def check_images(run_dir: Path, count: int = 8) -> tuple[list[Path] | None, str]:
    """Up to ``count`` of the run's own test images (spread over its classes), or None without them."""
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    root = (summary.get("data") or {}).get("root")
    test = Path(root) / "test" if root else None
    images = sorted(p for p in test.rglob("*") if p.is_file()) if test is not None and test.is_dir() else []
    images = images[:: max(1, len(images) // count)][:count]
    if not images:
        return None, "a seeded random batch (the run's test images are not here)"
    return images, f"{len(images)} of the run's test images ({test})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", default="onnx", choices=list(FORMATS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        images, what = check_images(args.run_dir)
        path, diff = export_run(args.run_dir, args.format, args.out, check=images)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written: {path} ({path.stat().st_size / 2**20:.1f} MiB; metadata also in {path.name}.json)")
    print(f"max |logit difference| against PyTorch on {what}: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
