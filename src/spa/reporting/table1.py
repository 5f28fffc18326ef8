"""Our runs in the layout of the paper's Table 1, side by side with it.

Rows come from ``steps.csv``: the unpruned runs give the fine-tuning and LoRA rows (density 1;
SPLoRA without pruning is LoRA, as in the paper), and each pruned run gives the step whose density
is closest to each reported density (30 % and 10 %). Cells are mean ± std over seeds, with the seed
count; learned parameters (thousands) and MACs at 32 × 32 (millions, the paper's "FLOPs") are
given once per row, from CIFAR-10 where present, as the paper does.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from spa.reporting.paper import DATASETS, compare
from spa.utils import atomic_write_text

REPORTED_DENSITIES = (0.30, 0.10)
PRUNING_ORDER = ("none", "weight", "gradient", "taylor", "lrp")
LEARNING_ORDER = ("finetune", "lora_r32", "lora_r8", "splora_r32", "splora_r8", "sppara")
LABELS = {"cifar10": "CIFAR-10", "flowers102": "Flowers 102", "cats_vs_dogs": "Cats & Dogs",
          "finetune": "Fine-tuning", "lora_r32": "LoRA-r32", "lora_r8": "LoRA-r8",
          "splora_r32": "SPLoRA-r32", "splora_r8": "SPLoRA-r8", "none": "—", "weight": "Weight",
          "gradient": "Gradient", "taylor": "Taylor", "lrp": "LRP"}


def _learning(adapter: str, pruning: str) -> str:
    return adapter.replace("splora", "lora") if pruning == "none" else adapter


def cells(steps: pd.DataFrame, densities=REPORTED_DENSITIES, tolerance: float = 0.025) -> pd.DataFrame:
    """One row per (dataset, pruning, learning, density, seed) from the runs' steps.csv rows."""
    picked = []
    unpruned = steps[(steps["pruning"] == "none") & (steps["step"] == 0)]
    picked.append(unpruned.assign(density=1.0))
    pruned = steps[steps["pruning"] != "none"]
    for target in densities:
        near = pruned.assign(gap=(pruned["density"] - target).abs())
        near = near[near["gap"] <= tolerance].sort_values("gap")
        picked.append(near.drop_duplicates(["dataset", "pruning", "adapter", "seed"]).assign(density=target))
    rows = pd.concat(picked, ignore_index=True)
    rows["learning"] = [_learning(a, p) for a, p in zip(rows["adapter"], rows["pruning"])]
    return rows[["dataset", "pruning", "learning", "density", "seed", "top1", "params_learned", "macs_32"]]


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table like :func:`spa.reporting.paper.load_table1`, plus ``seeds`` per cell."""
    keys = ["pruning", "learning", "density", "dataset"]
    agg = rows.groupby(keys, sort=False).agg(top1=("top1", "mean"), top1_std=("top1", "std"),
                                             seeds=("seed", "nunique"), params_k=("params_learned", "mean"),
                                             params_k_std=("params_learned", "std"), flops_m=("macs_32", "mean"),
                                             flops_m_std=("macs_32", "std")).reset_index()
    agg[["params_k", "params_k_std"]] /= 1e3
    agg[["flops_m", "flops_m_std"]] /= 1e6
    agg = agg.fillna({"top1_std": 0.0, "params_k_std": 0.0, "flops_m_std": 0.0})
    order = {"pruning": PRUNING_ORDER, "learning": LEARNING_ORDER, "dataset": DATASETS}
    rank = lambda col: col.map({v: i for i, v in enumerate(order[col.name])}).fillna(len(order[col.name]))  # noqa: E731
    return agg.sort_values(["pruning", "density", "learning", "dataset"], ascending=[True, False, True, True],
                           key=lambda col: rank(col) if col.name in order else col, ignore_index=True)


def curves(steps: pd.DataFrame) -> pd.DataFrame:
    """Every step of the pruned runs, mean and std over seeds per (dataset, pruning, learning,
    density): the data of Figure 6 and of the accuracy-vs-density curves."""
    pruned = steps[steps["pruning"] != "none"].assign(density=lambda f: f["density"].round(2),
                                                      learning=lambda f: f["adapter"])
    agg = pruned.groupby(["dataset", "pruning", "learning", "density"]).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"),
        params_k=("params_learned", "mean"), flops_m=("macs_32", "mean")).reset_index()
    agg["params_k"] /= 1e3
    agg["flops_m"] /= 1e6
    return agg.fillna({"top1_std": 0.0}).sort_values(["dataset", "pruning", "learning", "density"],
                                                     ascending=[True, True, True, False], ignore_index=True)


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """The paper's CSV layout: one row per (pruning, learning, density), datasets as columns."""
    keys = ["pruning", "learning", "density"]
    order = long[keys].drop_duplicates()
    per_row = long.sort_values("dataset", key=lambda d: d.map({"cifar10": 0}).fillna(1)).drop_duplicates(keys)
    out = order.merge(per_row[keys + ["params_k", "params_k_std", "flops_m", "flops_m_std"]], on=keys)
    for dataset in DATASETS:
        part = long[long["dataset"] == dataset].set_index(keys)
        for col, src in ((dataset, "top1"), (f"{dataset}_std", "top1_std"), (f"{dataset}_seeds", "seeds")):
            out[col] = out.set_index(keys).index.map(part[src]) if not part.empty else None
    return out


def versus(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Per cell: our top-1, the paper's, and ours minus the paper's."""
    keys = ["pruning", "learning", "density", "dataset"]
    both = ours.merge(paper[keys + ["top1"]].rename(columns={"top1": "paper"}), on=keys, how="outer")
    both["paper"] = both["paper"].astype(float)
    return both.assign(diff=both["top1"] - both["paper"])[keys + ["seeds", "top1", "paper", "diff"]]


def _cell(mean, std, seeds) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.2f} ± {std:.2f} ({int(seeds)})" if seeds and seeds > 1 else f"{mean:.2f} ({int(seeds or 0)})"


def markdown(long: pd.DataFrame, expected_seeds: int = 3) -> str:
    """Table 1 as Markdown: accuracy (mean ± std (seeds)) per dataset and the change vs fine-pruning
    with the same criterion and density; a header line says whether the table is complete."""
    table = wide(long)
    complete = int((long["seeds"] >= expected_seeds).sum())
    status = "final" if complete == len(long) else f"partial: {complete} of {len(long)} cells have {expected_seeds} seeds"
    learning = ["Fine-pruning" if lr == "finetune" and pr != "none" else LABELS.get(lr, lr)
                for lr, pr in zip(table["learning"], table["pruning"])]
    lines = {"criterion": table["pruning"].map(LABELS), "learning": learning,
             "density": table["density"].map("{:.0%}".format), "learned params (K)": table["params_k"].map("{:,.1f}".format),
             "FLOPs (M, 32 px)": table["flops_m"].map("{:,.1f}".format)}
    base = table[table["learning"] == "finetune"].set_index(["pruning", "density"])
    for dataset in DATASETS:
        if table[dataset].isna().all():
            continue
        ref = [base[dataset].get((p, d)) if (p, d) in base.index else None
               for p, d in zip(table["pruning"], table["density"])]
        lines[LABELS[dataset]] = [
            _cell(m, s, n) + ("" if r is None or pd.isna(r) or pd.isna(m) or learn == "finetune" else f" [{m - r:+.2f}]")
            for m, s, n, r, learn in zip(table[dataset], table[f"{dataset}_std"], table[f"{dataset}_seeds"], ref,
                                         table["learning"])]
    body = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    return (f"Table 1 ({status}). Top-1 (%) mean ± std (seeds); [change vs fine-pruning, same criterion and "
            f"density].\n\n{body}\n")


def claims_markdown(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    rows = []
    for learner, density, what in (("splora_r32", 0.10, "SPLoRA-r32 − fine-pruning, 10 % density"),
                                   ("splora_r8", 0.30, "SPLoRA-r8 − fine-pruning, 30 % density")):
        claims = []
        for table in (ours, paper):
            try:
                claims.append(compare(table, learner, density=density))
            except KeyError:          # a learner missing from a partial table
                claims.append(None)
        fmt = lambda c: "" if c is None or pd.isna(c.mean) else f"{c.mean:+.2f}"  # noqa: E731
        per = lambda c: "" if c is None else ", ".join(f"{LABELS.get(k, k)} {v:+.2f}" for k, v in c.per_dataset.items())  # noqa: E731
        rows.append({"claim": what, "ours": fmt(claims[0]), "paper": fmt(claims[1]),
                     "ours per dataset": per(claims[0]), "paper per dataset": per(claims[1])})
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n"


def swept_seeds(exp_name: str) -> int | None:
    """How many seeds ``configs/experiment/<exp_name>.yaml`` sweeps (None without such a config)."""
    from spa.reporting.cost import sweep_params
    try:
        seeds = sweep_params(exp_name).get("seed")
    except FileNotFoundError:
        return None
    return None if seeds is None else len(seeds)


def write_table1(steps: pd.DataFrame, paper: pd.DataFrame, out_dir: str | Path, name: str = "table1",
                 expected_seeds: int = 3) -> dict[str, Path]:
    """``<name>.{csv,md,tex}``, ``<name>_vs_paper.{csv,md}``, ``<name>_claims.md`` and
    ``<name>_curves.csv`` (every density, for the figures) under ``out_dir``."""
    out_dir = Path(out_dir)
    ours = aggregate(cells(steps))
    table = wide(ours)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex",
             "vs_csv": out_dir / f"{name}_vs_paper.csv", "vs_md": out_dir / f"{name}_vs_paper.md",
             "claims": out_dir / f"{name}_claims.md", "curves": out_dir / f"{name}_curves.csv"}
    atomic_write_text(paths["csv"], table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["md"], markdown(ours, expected_seeds))
    atomic_write_text(paths["tex"], table.to_latex(index=False, float_format="%.2f", na_rep=""))
    vs = versus(ours, paper)
    atomic_write_text(paths["vs_csv"], vs.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["vs_md"], vs.to_markdown(index=False, floatfmt=".2f") + "\n")
    atomic_write_text(paths["claims"], claims_markdown(ours, paper))
    atomic_write_text(paths["curves"], curves(steps).to_csv(index=False, float_format="%.4f"))
    return paths
