"""The timm compatibility matrix: python scripts/compat.py [--models A,B,...] [--adapters splora_r8,...] [--out DIR]

For each model (random init, batch 2, CPU) and adapter, every stage of the chain from adapter
insertion to onnxruntime parity (spa.bench.compat): ok, n/a, or the error's class, with the first
line of the first failure. Writes DIR/timm_compat.csv and DIR/timm_compat.md (grouped by family,
with the pass rate). ``make compat`` runs the whole matrix (default models, SPLoRA-r8).
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from spa import repo_root
from spa.bench.compat import ADAPTERS, COLUMNS, MODELS, matrix, passes
from spa.utils import atomic_write_text, package_versions


def markdown(rows: pd.DataFrame, minutes: float) -> str:
    """The matrix grouped by family, with the pass rate and how it was made."""
    ok = rows.apply(lambda r: passes(r.to_dict()), axis=1)
    versions = package_versions()
    lines = [f"{int(ok.sum())} of {len(rows)} (model, adapter) rows pass every stage ({100 * ok.mean():.0f} %); "
             f"random init, batch 2, CPU, fp32, tolerance 1e-4 on fuse and ort (max abs logit difference); "
             f"latency: onnxruntime, pruned (30 % of filters removed, weight criterion) / dense, interleaved. "
             f"timm {versions.get('timm')}, torch {versions.get('torch')}, onnxruntime {versions.get('onnxruntime')}; "
             f"{minutes:.1f} min on {torch.get_num_threads()} threads.", ""]
    for family, part in rows.groupby("family", sort=False):
        lines += [f"**{family}**", "", part.drop(columns=["family"]).to_markdown(index=False), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated timm names (default: the matrix's own list)")
    parser.add_argument("--adapters", default="splora_r8", help=f"comma-separated, of {list(ADAPTERS)}")
    parser.add_argument("--out", type=Path, default=None, help="default: results/tables")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of the speed stage")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per (model, adapter)")
    parser.add_argument("--memory", type=float, default=8.0, help="GiB of address space per (model, adapter)")
    args = parser.parse_args()
    adapters = [a for a in args.adapters.split(",") if a]
    unknown = [a for a in adapters if a not in ADAPTERS]
    if unknown:
        parser.error(f"--adapters {unknown}: use names of {list(ADAPTERS)}")
    families = dict((name, family) for family, name in MODELS)
    models = MODELS if args.models is None else tuple((families.get(m, "other"), m) for m in args.models.split(","))
    out = args.out or repo_root() / "results" / "tables"
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("spa").setLevel(logging.INFO)     # the exporters' own INFO lines are not ours
    warnings.filterwarnings("ignore")          # the exporters' and timm's deprecation chatter
    start = time.perf_counter()
    rows = pd.DataFrame(matrix(models, adapters, repeats=args.repeats, timeout_s=args.timeout,
                               memory_gib=args.memory), columns=COLUMNS)
    atomic_write_text(out / "timm_compat.csv", rows.to_csv(index=False))
    atomic_write_text(out / "timm_compat.md", markdown(rows, (time.perf_counter() - start) / 60))
    ok = rows.apply(lambda r: passes(r.to_dict()), axis=1)
    print(f"{int(ok.sum())} of {len(rows)} rows pass every stage; written {out / 'timm_compat.md'}")


if __name__ == "__main__":
    main()
