"""Our runs in the layout of the paper's Table 1, side by side with it.

Rows come from ``steps.csv``: the unpruned runs give the fine-tuning and LoRA rows (density 1;
SPLoRA without pruning is LoRA, as in the paper), and each pruned run gives the step whose density
is closest to each reported density (30 % and 10 %). Cells are mean ± std over seeds, with the seed
count; learned parameters (thousands) and MACs at 32 × 32 (millions, the paper's "FLOPs") are
given once per row, from CIFAR-10 where present, as the paper does. Datasets come from the runs:
the paper's three first, in its order, then any others (CIFAR-100 of ``table1_iclr``) by name; the
comparison with the paper and the claims cover the paper's datasets only.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from spa.metrics.collapse import MARK
from spa.reporting.collect import (
    any_collapsed,
    collapse_legend,
    collect_steps,
    flagged,
    run_machines,
    torch_versions,
    versions_line,
    write_versions,
)
from spa.reporting.paper import DATASETS, compare, load_table1
from spa.utils import atomic_write_text

REPORTED_DENSITIES = (0.30, 0.10)
# <criterion>_paper_rule: the criterion under the paper's normalisation and rule (a layer keeps one channel),
# kept beside a grid whose criteria use another rule (chosen by its budget study) so its effect stays visible
PAPER_RULE = "_paper_rule"
PRUNING_ORDER = ("none", "weight", "weight_paper_rule", "gradient", "gradient_paper_rule", "taylor",
                 "taylor_paper_rule", "lrp", "lrp_paper_rule")
LEARNING_ORDER = ("finetune", "lora_r32", "lora_r8", "splora_r32", "splora_r8", "sppara")
LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "flowers102": "Flowers 102", "cats_vs_dogs": "Cats & Dogs",
          "finetune": "Fine-tuning", "lora_r32": "LoRA-r32", "lora_r8": "LoRA-r8",
          "splora_r32": "SPLoRA-r32", "splora_r8": "SPLoRA-r8", "sppara": "SPPaRA", "none": "—", "weight": "Weight",
          "gradient": "Gradient", "taylor": "Taylor", "lrp": "LRP", "weight_paper_rule": "Weight (paper's rule)",
          "gradient_paper_rule": "Gradient (paper's rule)", "taylor_paper_rule": "Taylor (paper's rule)",
          "lrp_paper_rule": "LRP (paper's rule)"}


def dataset_order(names: Iterable[str]) -> list[str]:
    """The paper's datasets (always, in its order: its CSV layout) and then the others among ``names``
    by name, so a grid with more datasets than the paper's keeps all of them."""
    return list(DATASETS) + sorted(set(names) - set(DATASETS))


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
    if "collapsed" not in rows:       # runs from before steps.csv recorded it
        rows["collapsed"] = None
    return rows[["dataset", "pruning", "learning", "density", "seed", "top1", "params_learned", "macs_32",
                 "collapsed"]]


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table like :func:`spa.reporting.paper.load_table1`, plus ``seeds`` per cell."""
    keys = ["pruning", "learning", "density", "dataset"]
    agg = rows.groupby(keys, sort=False).agg(top1=("top1", "mean"), top1_std=("top1", "std"),
                                             seeds=("seed", "nunique"), params_k=("params_learned", "mean"),
                                             params_k_std=("params_learned", "std"), flops_m=("macs_32", "mean"),
                                             flops_m_std=("macs_32", "std"),
                                             collapsed=("collapsed", any_collapsed)).reset_index()
    agg[["params_k", "params_k_std"]] /= 1e3
    agg[["flops_m", "flops_m_std"]] /= 1e6
    agg = agg.fillna({"top1_std": 0.0, "params_k_std": 0.0, "flops_m_std": 0.0})
    order = {"pruning": PRUNING_ORDER, "learning": LEARNING_ORDER, "dataset": dataset_order(agg["dataset"])}
    rank = lambda col: col.map({v: i for i, v in enumerate(order[col.name])}).fillna(len(order[col.name]))  # noqa: E731
    return agg.sort_values(["pruning", "density", "learning", "dataset"], ascending=[True, False, True, True],
                           key=lambda col: rank(col) if col.name in order else col, ignore_index=True)


def curves(steps: pd.DataFrame) -> pd.DataFrame:
    """Every step of the pruned runs, mean and std over seeds per (dataset, pruning, learning,
    density): the data of Figure 6 and of the accuracy-vs-density curves."""
    pruned = steps[steps["pruning"] != "none"].assign(density=lambda f: f["density"].round(2),
                                                      learning=lambda f: f["adapter"])
    if "collapsed" not in pruned:
        pruned = pruned.assign(collapsed=None)
    agg = pruned.groupby(["dataset", "pruning", "learning", "density"]).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"),
        params_k=("params_learned", "mean"), flops_m=("macs_32", "mean"),
        collapsed=("collapsed", any_collapsed)).reset_index()
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
    for dataset in dataset_order(long["dataset"]):
        part = long[long["dataset"] == dataset].set_index(keys)
        for col, src in ((dataset, "top1"), (f"{dataset}_std", "top1_std"), (f"{dataset}_seeds", "seeds"),
                         (f"{dataset}_collapsed", "collapsed")):
            out[col] = out.set_index(keys).index.map(part[src]) if not part.empty else None
    return out


def _paper_datasets(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our cells of the datasets the paper reports: the only ones a comparison with it can cover."""
    return ours[ours["dataset"].isin(set(paper["dataset"]))]


def versus(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Per cell of the paper's datasets: our top-1, the paper's, ours minus the paper's, and whether ours
    collapsed (a difference from the paper then measures the broken network, not the method)."""
    keys = ["pruning", "learning", "density", "dataset"]
    theirs = paper[keys + ["top1"]].rename(columns={"top1": "paper"})
    both = _paper_datasets(ours, paper).merge(theirs, on=keys, how="outer")
    both["paper"] = both["paper"].astype(float)
    return both.assign(diff=both["top1"] - both["paper"])[keys + ["seeds", "top1", "paper", "diff", "collapsed"]]


def _cell(mean, std, seeds, collapsed=False) -> str:
    if pd.isna(mean):
        return ""
    cell = f"{mean:.2f} ± {std:.2f} ({int(seeds)})" if seeds and seeds > 1 else f"{mean:.2f} ({int(seeds or 0)})"
    return cell + (f" {MARK}" if flagged(collapsed) else "")


def markdown(long: pd.DataFrame, expected_seeds: int = 3, versions: list[str] | None = None) -> str:
    """Table 1 as Markdown: accuracy (mean ± std (seeds)) per dataset and the change vs fine-pruning
    with the same criterion and density; header lines say whether the table is complete and which
    torch ``versions`` the runs recorded."""
    table = wide(long)
    grid = long[~long["pruning"].astype(str).str.endswith(PAPER_RULE)]     # paper-rule rows: one seed by design
    complete = int((grid["seeds"] >= expected_seeds).sum())
    status = ("final" if complete == len(grid)
              else f"partial: {complete} of {len(grid)} cells have {expected_seeds} seeds")
    learning = ["Fine-pruning" if lr == "finetune" and pr != "none" else LABELS.get(lr, lr)
                for lr, pr in zip(table["learning"], table["pruning"])]
    lines = {"criterion": table["pruning"].map(LABELS), "learning": learning,
             "density": table["density"].map("{:.0%}".format),
             "learned params (K)": table["params_k"].map("{:,.1f}".format),
             "FLOPs (M, 32 px)": table["flops_m"].map("{:,.1f}".format)}
    base = table[table["learning"] == "finetune"].set_index(["pruning", "density"])
    for dataset in dataset_order(long["dataset"]):
        if table[dataset].isna().all():
            continue
        ref = [base[dataset].get((p, d)) if (p, d) in base.index else None
               for p, d in zip(table["pruning"], table["density"])]
        lines[LABELS.get(dataset, dataset)] = [
            _cell(m, s, n, c)
            + ("" if r is None or pd.isna(r) or pd.isna(m) or learn == "finetune" else f" [{m - r:+.2f}]")
            for m, s, n, c, r, learn in zip(table[dataset], table[f"{dataset}_std"], table[f"{dataset}_seeds"],
                                            table[f"{dataset}_collapsed"], ref, table["learning"])]
    body = pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
    return (f"Table 1 ({status}). Top-1 (%) mean ± std (seeds); [change vs fine-pruning, same criterion and "
            f"density].\n\n{versions_line(versions or [])}\n\n{body}\n{collapse_legend(long['collapsed'])}")


def claims_markdown(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """The two headline claims (docs/method.md §4) on our cells and on the paper's, over the paper's datasets."""
    ours, rows = _paper_datasets(ours, paper), []
    for learner, density, what in (("splora_r32", 0.10, "SPLoRA-r32 − fine-pruning, 10 % density"),
                                   ("splora_r8", 0.30, "SPLoRA-r8 − fine-pruning, 30 % density")):
        claims = []
        for table in (ours, paper):
            try:
                claims.append(compare(table, learner, density=density))
            except KeyError:          # a learner missing from a partial table
                claims.append(None)
        fmt = lambda c: "" if c is None or pd.isna(c.mean) else f"{c.mean:+.2f}"  # noqa: E731
        per = lambda c: "" if c is None else ", ".join(  # noqa: E731
            f"{LABELS.get(k, k)} {v:+.2f}" for k, v in c.per_dataset.items())
        rows.append({"claim": what, "ours": fmt(claims[0]), "paper": fmt(claims[1]),
                     "ours per dataset": per(claims[0]), "paper per dataset": per(claims[1]),
                     "evidence": evidence(ours, learner, density)})
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n" + (
        "\nA claim computed over a collapsed cell (†: spa.metrics.collapse) is not evidence about the method: the "
        "network broke at that budget.\n" if any(r["evidence"] != "yes" for r in rows) else "")


def evidence(ours: pd.DataFrame, learner: str, density: float, baseline: str = "finetune") -> str:
    """"yes", or "not evidence" naming the collapsed cells (either side, any criterion and data set) a
    claim's difference is computed over."""
    used = ours[(ours["density"].round(4) == round(density, 4)) & (ours["pruning"] != "none")
                & ours["learning"].isin([learner, baseline])]
    # the (data set, criterion) pairs the difference is computed over: both learners there (a paper-rule
    # row of fine-pruning alone is no part of it)
    both = used.groupby(["dataset", "pruning"])["learning"].transform("nunique") == 2
    used = used[both]
    bad = used[used["collapsed"].map(flagged)]
    if bad.empty:
        return "yes"
    return "not evidence: collapsed " + ", ".join(
        f"{LABELS.get(r.dataset, r.dataset)} {LABELS.get(r.pruning, r.pruning)} {LABELS.get(r.learning, r.learning)}"
        for r in bad.itertuples())


def swept_seeds(exp_name: str) -> int | None:
    """How many seeds ``configs/experiment/<exp_name>.yaml`` sweeps (None without such a config)."""
    from spa.reporting.cost import sweep_params
    try:
        seeds = sweep_params(exp_name).get("seed")
    except FileNotFoundError:
        return None
    return None if seeds is None else len(seeds)


def write_table1(steps: pd.DataFrame, paper: pd.DataFrame, out_dir: str | Path, name: str = "table1",
                 expected_seeds: int = 3, machines: dict | None = None) -> dict[str, Path]:
    """``<name>.{csv,md,tex}``, ``<name>_vs_paper.{csv,md}``, ``<name>_claims.md``, ``<name>_curves.csv``
    (every density, for the figures) and ``<name>_versions.json`` (the torch versions of the runs, which
    the Markdown and LaTeX tables state in their header and the CSV files leave out, and ``machines``: the
    runs' CPUs and kernel sets, :func:`~spa.reporting.collect.run_machines`) under ``out_dir``."""
    out_dir = Path(out_dir)
    ours = aggregate(cells(steps))
    table = wide(ours)
    versions = torch_versions(steps)
    header = versions_line(versions)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex",
             "vs_csv": out_dir / f"{name}_vs_paper.csv", "vs_md": out_dir / f"{name}_vs_paper.md",
             "claims": out_dir / f"{name}_claims.md", "curves": out_dir / f"{name}_curves.csv",
             "versions": out_dir / f"{name}_versions.json"}
    atomic_write_text(paths["csv"], table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["md"], markdown(ours, expected_seeds, versions))
    atomic_write_text(paths["tex"], f"% {header}\n" + table.to_latex(index=False, float_format="%.2f", na_rep=""))
    vs = versus(ours, paper)
    atomic_write_text(paths["vs_csv"], vs.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["vs_md"], f"{header}\n\n" + vs.to_markdown(index=False, floatfmt=".2f") + "\n")
    atomic_write_text(paths["claims"], f"{header}\n\n" + claims_markdown(ours, paper))
    atomic_write_text(paths["curves"], curves(steps).to_csv(index=False, float_format="%.4f"))
    write_versions(paths["versions"], versions, machines)
    return paths


def table1_report(exp_dir: str | Path, tables_dir: str | Path, name: str,
                  expected_seeds: int | None = None) -> dict[str, Path]:
    """Table 1 of the finished runs under ``exp_dir`` (:func:`write_table1`, against the paper's table):
    the one writer of these files, for ``scripts/table1.py`` and for the per-run report of a
    ``report: table1`` experiment alike. ``expected_seeds`` defaults to the seeds the config sweeps, else 3."""
    steps = collect_steps(exp_dir)
    if steps.empty:
        raise FileNotFoundError(f"no finished runs under {exp_dir}")
    return write_table1(steps, load_table1(), tables_dir, name, expected_seeds or swept_seeds(name) or 3,
                        run_machines(exp_dir))
