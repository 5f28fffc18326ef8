"""The timm compatibility matrix: python scripts/compat.py [--models A,B,...] [--adapters splora_r8,...] [--out DIR]

For each model (random init, batch 2, CPU) and adapter, every stage of the chain from adapter
insertion to onnxruntime parity (spa.bench.compat): ok, n/a, or the error's class, with the first
line of the first failure. Writes DIR/timm_compat.csv and DIR/timm_compat.md (one table, grouped by
family, with the pass rate). ``make compat`` runs the whole matrix (default models, SPLoRA-r8).
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
from spa.bench.compat import ADAPTERS, COLUMNS, MODELS, STAGE_COLUMNS, matrix, passes
from spa.utils import atomic_write_text, package_versions


def failed_stage(row: pd.Series) -> str:
    return next((s for s in STAGE_COLUMNS if row[s] not in ("ok", "n/a")), "?")


def markdown(rows: pd.DataFrame, minutes: float) -> str:
    """One table, models grouped by family: whether every stage passed (else the stage that failed),
    the numbers, and the error; with the pass rate and how it was made."""
    ok = rows.apply(lambda r: passes(r.to_dict()), axis=1)
    versions = package_versions(("timm", "torch", "onnxruntime", "torch-pruning"))
    lines = [f"{int(ok.sum())} of {len(rows)} (model, adapter) rows pass every stage ({100 * ok.mean():.0f} %); "
             f"random init (BatchNorm statistics from 2 random batches), batch 2, CPU, fp32, tolerance 1e-4 on fuse "
             f"and ort (max abs logit difference); latency: onnxruntime, pruned (30 % of filters removed, weight "
             f"criterion) / dense, interleaved. `left_out`: layers without an adapter plus layers or channel groups "
             f"never pruned. timm {versions.get('timm')}, torch {versions.get('torch')}, Torch-Pruning "
             f"{versions.get('torch-pruning')}, onnxruntime {versions.get('onnxruntime')}; {minutes:.1f} min on "
             f"{torch.get_num_threads()} threads.", ""]
    table = pd.DataFrame({
        "family": rows["family"], "model": rows["model"], "adapter": rows["adapter"],
        "stages": ["all ok" if passed else f"fails at {failed_stage(r)}"
                   for passed, (_, r) in zip(ok, rows.iterrows())],
        **{c: rows[c] for c in ("fuse_max_abs", "ort_max_abs", "macs_ratio", "latency_ratio", "left_out")},
        "error": rows["error"].fillna("").astype(str).str.replace("|", "/", regex=False)})
    lines += [table.to_markdown(index=False), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma-separated timm names (default: the matrix's own list)")
    parser.add_argument("--adapters", default="splora_r8", help=f"comma-separated, of {list(ADAPTERS)}")
    parser.add_argument("--out", type=Path, default=None, help="default: results/tables")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of the speed stage")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per (model, adapter)")
    parser.add_argument("--memory", type=float, default=12.0, help="GiB of address space per (model, adapter)")
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
