"""Export a finished run's deployable network: python scripts/export.py RUN_DIR [--format onnx|exported|torchscript]

Writes RUN_DIR/model.onnx (or .pt2, .ts; --out PATH elsewhere) with a dynamic batch and the run's classes,
input size and normalisation in the file's metadata (and in a readable <file>.json beside it), after
checking that the file gives PyTorch's logits (max |difference| <= 1e-4) on a batch of the run's own test
images when its data is at hand (else a seeded random batch). scripts/predict.py reads the file back.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from spa.export import FORMATS, export_metadata, export_run, write_metadata_sidecar


def check_batch(run_dir: Path, count: int = 8) -> tuple[torch.Tensor | None, str]:
    """Up to ``count`` of the run's own test images through its test transform, or None without them."""
    import json

    from spa.deploy import load_run, read_images
    summary = json.loads((run_dir / "summary.json").read_text())
    root = Path(summary["data"].get("root") or "")
    images = sorted(p for p in (root / "test").rglob("*") if p.is_file()) if (root / "test").is_dir() else []
    images = images[:: max(1, len(images) // count)][:count]       # spread over the classes
    if not images:
        return None, "a seeded random batch (the run's test images are not here)"
    run = load_run(run_dir)
    return read_images(images, run.transform), f"{len(images)} of the run's test images ({root / 'test'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", default="onnx", choices=list(FORMATS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        batch, what = check_batch(args.run_dir)
        path, diff = export_run(args.run_dir, args.format, args.out, check=batch)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sidecar = write_metadata_sidecar(path, export_metadata(args.run_dir))
    print(f"written: {path} ({path.stat().st_size / 2**20:.1f} MiB; metadata also in {sidecar.name})")
    print(f"max |logit difference| against PyTorch on {what}: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
