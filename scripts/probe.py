"""Are the packaged ImageNet weights really pretrained? A linear probe on frozen features.

python scripts/probe.py [--data ../shared/data/cifar10-subset] [--size 224]
                        [--backbones efficientnet_lite0 mobilenetv2_100]

For each backbone: penultimate features of 100 training and 50 test images of every class (a seeded,
stratified choice, dataset.split_seed 0) of the (real) CIFAR-10 subset, resized to --size px and normalised
as the weights declare, from the
packaged ImageNet weights and from a random init of the same network (seed 0); a logistic
regression (spa.metrics.probe: L-BFGS, C = 1, fixed in advance) fitted on the training features,
scored on the test ones. Prints the table and writes results/tables/probe.{csv,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from spa import config_dir, repo_root
from spa.data import SampleDataset, build_datasets
from spa.metrics.probe import features, fit_probe
from spa.models import create_backbone, declared_normalization
from spa.utils import atomic_write_text, package_versions, seed_everything


def backbone_config(name: str):
    from omegaconf import OmegaConf

    path = config_dir() / "backbone" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"no configs/backbone/{name}.yaml")
    cfg = OmegaConf.load(path)
    if not cfg.get("packaged_weights"):
        raise SystemExit(f"backbone {name} has no packaged weights (backbone.packaged_weights); the probe needs them")
    return cfg


def probe(name: str, data: Path, size: int, per_class: int = 100, test_per_class: int = 50) -> list[dict]:
    """Probe rows (pretrained, random init) of backbone config ``name`` on the image folder ``data``."""
    cfg = backbone_config(name)
    norm = declared_normalization("pretrained", cfg.packaged_weights)
    bundle = build_datasets(
        "image_folder",
        data,
        image_size=size,
        transform="cifar",
        max_per_class=per_class,
        test_max_per_class=test_per_class,
        mean_std=(norm["mean"], norm["std"]),
    )
    test = bundle.test  # the test transform: no augmentation
    train = SampleDataset(bundle.train.samples, test.transform)  # for the training features either
    rows = []
    for weights in ("pretrained", "none"):
        seed_everything(0)
        model, info = create_backbone(
            cfg.timm_name, bundle.num_classes, weights=weights, packaged_weights=cfg.packaged_weights
        )
        t0 = time.perf_counter()
        (xs, ys), (xt, yt) = features(model, train), features(model, test)
        result = fit_probe(xs, ys, xt, yt)
        rows.append(
            {
                "backbone": name,
                "timm_name": cfg.timm_name,
                "weights": f"ImageNet ({info.package}=={info.version})" if weights == "pretrained" else "random init",
                "image_size": size,
                "train_images": len(train),
                "test_images": len(test),
                "feature_dim": xs.shape[1],
                "train_top1": round(result.train_top1, 2),
                "test_top1": round(result.test_top1, 2),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{name} {rows[-1]['weights']}: probe test top-1 {result.test_top1:.2f}% "
            f"(train {result.train_top1:.2f}%, {len(train)} / {len(test)} images at {size} px)",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=repo_root().parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenetv2_100"])
    parser.add_argument(
        "--out",
        type=Path,
        default=repo_root() / "results" / "tables",
        help="where probe.{csv,md} go (--out '' writes nothing)",
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        print(
            f"{args.data} not found: point --data at an image folder (train/<class>/*, test/<class>/*), "
            f"e.g. ../shared/data/cifar10-subset",
            file=sys.stderr,
        )
        return 1
    table = pd.DataFrame([row for name in args.backbones for row in probe(name, args.data, args.size)])
    shown = table[["backbone", "weights", "image_size", "train_images", "test_images", "test_top1", "train_top1"]]
    text = (
        f"Linear probe (logistic regression, C = 1) on frozen penultimate features of the CIFAR-10 subset "
        f"({args.data.name}); top-1 in %.\n\ntorch {package_versions()['torch']}\n\n"
        + shown.to_markdown(index=False, disable_numparse=True)
        + "\n"
    )
    print(text)
    if str(args.out):
        atomic_write_text(args.out / "probe.csv", table.drop(columns=["seconds"]).to_csv(index=False))
        atomic_write_text(args.out / "probe.md", text)
        print(f"written: {args.out / 'probe.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
