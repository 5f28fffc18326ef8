"""Top-5 predictions of a finished run on image files: python scripts/predict.py RUN_DIR IMAGE [IMAGE ...]

RUN_DIR is a run directory under results/runs/ (saved with save_model=true): its deployable model.pt
(fused, pruned), its own test-time preprocessing (transform style, image size, normalisation) and
its class names. Prints, per image, the k most probable classes with their probabilities.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from spa.deploy import load_run, read_images, top_k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("-k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run_dir)
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            with torch.no_grad():
                logits = run.model(read_images(paths, run.transform))
            for path, best in zip(paths, top_k(logits, run.classes, args.k)):
                print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in best))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
