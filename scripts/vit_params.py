"""Learned parameters of fine-pruning and SPLoRA-r8 on ViT-B/16 itself, unpruned and at 25 % kept weights,
pruned as experiment=vit_iclr prunes: python scripts/vit_params.py

The ratio the ICLR claim quotes ("6.8x fewer parameters") depends on the architecture and the pruning
structure only, not on training: this counts it on timm's vit_base_patch16_224 with random weights
(exact for any weights: every block keeps the same number of heads and MLP channels), for each ICLR data
set's class count, in about a minute on a CPU. Writes results/tables/vit_iclr_params.{csv,md}.
"""
from __future__ import annotations

import logging
import sys

import pandas as pd

from spa import repo_root
from spa.reporting.report import label
from spa.reporting.vit import PAPER_CLAIM, architecture_counts
from spa.utils import atomic_write_text

CLASSES = {"cifar10": 10, "cifar100": 100, "flowers102": 102, "cats_vs_dogs": 2, "stanford_cars": 196}
LEARNERS = {"fine-pruning": ("finetune", {}), "SPLoRA-r8": ("splora", {"rank": 8})}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for dataset, classes in CLASSES.items():
        counts = {r["learner"]: r for r in architecture_counts("vit_base_patch16_224", classes, LEARNERS)}
        ft, sp = counts["fine-pruning"], counts["SPLoRA-r8"]
        rows.append({"dataset": dataset, "classes": classes, "fine-pruning unpruned": ft["learned_unpruned"],
                     "SPLoRA-r8 unpruned": sp["learned_unpruned"], "fine-pruning at 25 %": ft["learned_at"],
                     "SPLoRA-r8 at 25 %": sp["learned_at"], "ratio unpruned": ft["learned_unpruned"] /
                     sp["learned_unpruned"], "ratio at 25 %": ft["learned_at"] / sp["learned_at"]})
    table = pd.DataFrame(rows)
    out = repo_root() / "results" / "tables" / "vit_iclr_params"
    atomic_write_text(out.with_suffix(".csv"), table.round(2).to_csv(index=False))
    counts = [c for c in table.columns if c.startswith(("fine-pruning", "SPLoRA"))]
    ratios = ["ratio unpruned", "ratio at 25 %"]
    shown = table.assign(dataset=table["dataset"].map(label), classes=table["classes"].astype(str),
                         **{c: table[c].map("{:,.0f}".format) for c in counts},
                         **{c: table[c].map("{:.1f}×".format) for c in ratios})
    mean = {"dataset": "mean over the data sets", **{c: f"{table[c].mean():.1f}×" for c in ratios}}
    shown = pd.concat([shown, pd.DataFrame([mean])], ignore_index=True).fillna("")
    text = ("Learned parameters on ViT-B/16 (timm's vit_base_patch16_224; the patch embedding frozen; SPLoRA r8 on "
            "qkv, proj, fc1, fc2 with biases, norms, tokens and head), pruned as experiment=vit_iclr (weight "
            "magnitude, every block alike, 5 % steps), at 25 % kept weights interpolated between the two steps "
            f"around it; counted, not trained. The claim's ratio: {PAPER_CLAIM['ratio']}×.\n\n"
            + shown.to_markdown(index=False, disable_numparse=True) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text + f"written: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
