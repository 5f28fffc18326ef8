"""What a sweep costs, from its configs and measured epoch times: python scripts/sweep_cost.py EXP

Epochs are counted exactly from configs/experiment/EXP.yaml (and the hparams it composes); hours =
epochs x the time of one full-density epoch per dataset, taken from
  --from-runs DIR [DIR ...]   finished runs: the median epoch of their unpruned trainings
                              (epochs.jsonl), e.g. the first runs of the sweep, and the MACs of
                              each density their steps.csv recorded, or
  --epoch-seconds NAME=S ...  stated times, or, with neither, the times the experiment states in its
                              `cost:` section (experiment=vit_iclr does).
Pruned epochs are charged at full cost (upper bound) and, where MACs per density are known, at the
MACs ratio (lower bound).
Writes results/tables/EXP_cost.{csv,md} (or --out NAME).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from spa import repo_root
from spa.reporting.collect import collect_runs, torch_versions, versions_line
from spa.reporting.cost import measured_epochs, stated_epoch_seconds, sweep_cost, sweep_epochs
from spa.utils import atomic_write_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_name")
    parser.add_argument("--from-runs", nargs="*", type=Path, default=[])
    parser.add_argument("--epoch-seconds", nargs="*", default=[], metavar="NAME=S")
    parser.add_argument("--note", default="", help="a line under the table: where the epoch times come from")
    parser.add_argument("--out", default=None, help="output name under results/tables (default EXP_cost)")
    args = parser.parse_args()

    epoch_s, ratios, sizes = measured_epochs(*args.from_runs) if args.from_runs else ({}, None, {})
    if not args.from_runs and not args.epoch_seconds:
        try:
            epoch_s, stated_note = stated_epoch_seconds(args.exp_name)
        except FileNotFoundError:
            epoch_s, stated_note = {}, ""
        args.note = args.note or stated_note
    for item in args.epoch_seconds:
        name, _, seconds = item.partition("=")
        epoch_s[name] = float(seconds)
    try:
        cost = sweep_cost(sweep_epochs(args.exp_name, train_images=sizes), epoch_s, ratios)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cost["epoch_s"] = cost["dataset"].map(epoch_s)
    hours = [c for c in ("hours", "hours_macs") if c in cost]
    total = pd.DataFrame([{"dataset": "total", "phase": "", "epochs": cost["epochs"].sum(),
                           **{c: cost[c].sum() for c in hours}, "epoch_s": None}])
    table = pd.concat([cost, total], ignore_index=True)
    shown = table.assign(epochs=table["epochs"].map("{:,.0f}".format),
                         **{c: table[c].map("{:,.2f}".format) for c in hours},
                         epoch_s=table["epoch_s"].map(lambda s: "" if pd.isna(s) else f"{s:,.1f}"))
    shown = shown[["dataset", "phase", "epochs", "epoch_s", *hours]].rename(columns={
        "epochs": "epochs (all runs)", "epoch_s": "s / full-density epoch",
        "hours": "hours (pruned epochs at full cost)", "hours_macs": "hours (pruned epochs × MACs ratio)"})
    markdown = shown.to_markdown(index=False, disable_numparse=True) + "\n"
    if args.from_runs:     # measured epoch times: say which torch measured them
        versions = sorted({v for root in args.from_runs for v in torch_versions(collect_runs(root))})
        markdown = f"{versions_line(versions)}\n\n" + markdown
    if args.note:
        markdown += f"\n{args.note}\n"
    out = repo_root() / "results" / "tables" / (args.out or f"{args.exp_name}_cost")
    atomic_write_text(out.with_suffix(".csv"), table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out.with_suffix(".md"), markdown)
    print(markdown)
    print(f"written: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
