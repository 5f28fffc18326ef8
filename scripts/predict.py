"""Top-5 predictions on image files: python scripts/predict.py RUN_DIR_OR_EXPORT IMAGE [IMAGE ...]

RUN_DIR is a run directory under results/runs/ (saved with save_model=true): its deployable model.pt
(fused, pruned), its own test-time preprocessing (transform style, image size, normalisation) and
its class names. An exported file (scripts/export.py: .onnx, run in onnxruntime; .pt2; .ts) carries
the same in its metadata. Prints, per image, the k most probable classes with their probabilities.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from spa.deploy import load_run, read_images, top_k


def _classifier(source: Path):
    """(batch -> logits, the test transform, class names) of a run directory or an exported file."""
    if source.is_file():
        from spa.data.transforms import build_transforms
        from spa.export import load_export
        run, meta = load_export(source)
        if not meta.get("classes"):
            raise ValueError(f"{source} carries no spa metadata (classes, input size): export it with "
                             f"scripts/export.py")
        _, transform = build_transforms(meta["transform"], int(meta["image_size"]), (meta["mean"], meta["std"]))
        return (lambda x: torch.from_numpy(run(x.numpy()))), transform, meta["classes"]
    loaded = load_run(source)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded.model(x)
    return forward, loaded.transform, loaded.classes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("-k", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        forward, transform, classes = _classifier(args.run_dir)
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            logits = forward(read_images(paths, transform))
            for path, best in zip(paths, top_k(logits, classes, args.k)):
                print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in best))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
