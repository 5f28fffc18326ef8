"""The paper's Table 1 in long form, and its headline claims computed the way they follow from the
table (docs/method.md §4), so the same computation can run on our own aggregated results.

- "+6.9 % accuracy using half the parameters at 90 % pruned weights": SPLoRA-r32 minus
  fine-pruning at 10 % density, averaged over the criteria within each dataset (only criteria with
  both cells), then over the datasets.
- "17× fewer parameters at 70 % pruning with 1.6 % lower accuracy": SPLoRA-r8 vs fine-pruning at
  30 % density, the same averaging; with the ratio of learned parameters per criterion.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from spa import repo_root

DATASETS = ("cifar10", "flowers102", "cats_vs_dogs")
PAPER_TABLE1 = repo_root() / "results" / "reference" / "table1_paper.csv"


def load_table1(path: str | Path = PAPER_TABLE1) -> pd.DataFrame:
    """One row per (pruning, learning, density, dataset): top1, top1_std, params_k, flops_m."""
    wide = pd.read_csv(path)
    keys = ["pruning", "learning", "density", "params_k", "params_k_std", "flops_m", "flops_m_std"]
    top1 = wide.melt(id_vars=keys, value_vars=list(DATASETS), var_name="dataset", value_name="top1")
    std = wide.melt(id_vars=keys, value_vars=[f"{d}_std" for d in DATASETS], var_name="dataset",
                    value_name="top1_std")
    top1["top1_std"] = std["top1_std"].to_numpy()
    return top1


@dataclass
class Claim:
    learner: str
    baseline: str
    density: float
    per_dataset: dict[str, float]        # mean over criteria of (learner - baseline) top-1
    mean: float                          # mean over datasets
    params_ratio: dict[str, float]       # baseline / learner learned parameters, per criterion


def compare(table: pd.DataFrame, learner: str, baseline: str = "finetune", density: float = 0.10) -> Claim:
    """``learner`` minus ``baseline`` top-1 at ``density``: per criterion, averaged within each
    dataset over the criteria where both have a number, then over datasets."""
    rows = table[(table["density"].round(4) == round(density, 4)) & (table["pruning"] != "none")]
    acc = rows.pivot_table(index=["dataset", "pruning"], columns="learning", values="top1")
    diff = (acc[learner] - acc[baseline]).dropna()
    per_dataset = diff.groupby(level="dataset").mean()
    params = rows.drop_duplicates(["pruning", "learning"]).pivot_table(index="pruning", columns="learning",
                                                                      values="params_k")
    ratio = (params[baseline] / params[learner]).dropna()
    return Claim(learner, baseline, density, {k: round(float(v), 2) for k, v in per_dataset.items()},
                 round(float(per_dataset.mean()), 2), {k: round(float(v), 1) for k, v in ratio.items()})


def headline_claims(table: pd.DataFrame) -> dict[str, Claim]:
    return {"r32_at_10pct": compare(table, "splora_r32", density=0.10),
            "r8_at_30pct": compare(table, "splora_r8", density=0.30)}
