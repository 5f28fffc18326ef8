"""Tables and figures of one experiment. Pretty labels live here, and only here.

One writer per file: the experiment's ``report`` setting says who writes ``tables/<name>.{csv,md}``:
``true``, this module's generic summary (one row per group of seeds); ``table1``, the paper's Table 1
layout (:func:`spa.reporting.table1.table1_report`, as ``scripts/table1.py`` writes it);
``false``, not the per-run report but a script after the sweep (``scripts/table1.py`` or
``scripts/select_lr.py``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from spa import config_dir
from spa.metrics.collapse import MARK
from spa.pruning.importance import CRITERIA
from spa.records import RunDir
from spa.reporting.collect import (
    any_collapsed,
    collapse_legend,
    collect_epochs,
    collect_runs,
    collect_steps,
    flagged,
    run_machines,
    torch_versions,
    versions_line,
    write_versions,
)
from spa.reporting.plotting import new_figure, save_figure, style_axes
from spa.utils import atomic_write_text

LABELS = {
    "finetune": "Fine-tuning", "splora": "SPLoRA", "sppara": "SPPaRA", "lora": "LoRA",
    "splora_r8": "SPLoRA-r8", "splora_r32": "SPLoRA-r32", "lora_r8": "LoRA-r8", "lora_r32": "LoRA-r32",
    "none": "—", "taylor": "Taylor", "weight": "weight", "gradient": "gradient", "lrp": "LRP", "random": "random",
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "flowers102": "Flowers 102", "cats_vs_dogs": "Cats & Dogs",
    "stanford_cars": "Stanford Cars",
    "cifar10_first5": "CIFAR-10 classes 0–4 (base)", "cifar10_last5": "CIFAR-10 classes 5–9 (transfer)",
}
WEIGHTS_LABELS = {"none": "random init", "pretrained": "pretrained (hub)", "packaged": "ImageNet (packaged)",
                  "file": "our base run"}
GROUP = ["dataset", "backbone", "adapter", "pruning", "weights"]


def label(value: object) -> str:
    return LABELS.get(str(value), str(value))


def dataset_rank(name: str) -> int:
    """Where a data set goes in a table: the order of :data:`LABELS`, unknown names after."""
    return list(LABELS).index(name) if name in LABELS else len(LABELS)


def mean_std_cell(mean: float, std: float, seeds: int, collapsed: bool | None = False) -> str:
    """A table cell ``mean ± std (seeds)``, two decimals, marked † where ``collapsed`` (spa.metrics.collapse)."""
    return f"{mean:.2f} ± {std:.2f} ({seeds})" + (f" {MARK}" if flagged(collapsed) else "")


def report_setting(exp_name: str) -> bool | str | None:
    """The ``report`` value of ``configs/experiment/<exp_name>.yaml``, or of the experiment it builds on
    (a plain name in its ``defaults``); None where no config sets it."""
    path = config_dir() / "experiment" / f"{exp_name}.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    if "report" in cfg:
        return cfg.report
    parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return next((r for r in map(report_setting, parents) if r is not None), None)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds (with the seed count) per (dataset, backbone, adapter, pruning, weights)."""
    if runs.empty:
        return pd.DataFrame()
    grouped = runs.groupby(GROUP, sort=False, dropna=False)
    out = grouped.agg(seeds=("seed", "nunique"), epochs=("epochs", "first"), num_classes=("num_classes", "first"),
                      density=("density", "mean"),
                      test_top1=("test_top1", "mean"), test_top1_std=("test_top1", "std"),
                      test_top5=("test_top5", "mean"), test_top5_std=("test_top5", "std"),
                      params_trainable=("params_trainable", "first"), params_total=("params_total", "first"),
                      wall_time_s=("wall_time_s", "mean"), collapsed=("collapsed", any_collapsed)).reset_index()
    return out.fillna({"test_top1_std": 0.0, "test_top5_std": 0.0})


def _pm(mean: float, std: float, n: int, collapsed: bool = False) -> str:
    return (f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}") + (f" {MARK}" if flagged(collapsed) else "")


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as Markdown; top-5 only where some data set has more than 5 classes."""
    rows = pd.DataFrame({
        "data": summary["dataset"].map(label), "backbone": summary["backbone"],
        "learning": summary["adapter"].map(label), "pruning": summary["pruning"].map(label),
        "start": summary["weights"].map(WEIGHTS_LABELS), "epochs": summary["epochs"],
        "density": summary["density"].map("{:.0%}".format),
        "top-1 (%)": [_pm(m, s, n, c) for m, s, n, c in zip(summary.test_top1, summary.test_top1_std, summary.seeds,
                                                             summary.collapsed)],
        "top-5 (%)": [_pm(m, s, n) for m, s, n in zip(summary.test_top5, summary.test_top5_std, summary.seeds)],
        "seeds": summary["seeds"],
        "learned params": summary["params_trainable"].map("{:,}".format),
        "time (s)": summary["wall_time_s"].map("{:.0f}".format),
    })
    if (summary["num_classes"] <= 5).all():
        rows = rows.drop(columns=["top-5 (%)"])
    return rows.to_markdown(index=False, disable_numparse=True) + "\n" + collapse_legend(summary["collapsed"])


def budget_lines(runs: pd.DataFrame) -> list[str]:
    """One line per distinct pruning budget among the pruned runs (read from their ``config.yaml``): the
    criterion, its normalisation, the guard, step size, target, recovery epochs and scoring batches, so a
    table says which setting made it. Channel pruning only (a block run's stages are described elsewhere)."""
    lines: dict[str, None] = {}
    for run_dir in runs.loc[runs["pruning"] != "none", "run_dir"]:
        cfg = RunDir(run_dir).read_config() or {}
        pr, sc = cfg.get("pruning") or {}, cfg.get("schedule") or {}
        if sc.get("step_fraction") is None or "criterion" not in pr:
            continue
        guard, criterion = pr.get("max_group_pruning"), CRITERIA.get(str(pr["criterion"]))
        norm = pr.get("normalization") or (criterion.normalization if criterion else "the criterion's")
        ignore = list(pr.get("ignore") or [])
        scoring = f"{sc['score_batches']} batches" if sc.get("score_batches") else "a full epoch"
        lines[(f"Budget ({pr['name']}): steps of {sc['step_fraction']:.1%} of the filters down to "
               f"{sc.get('target_density', 0):.0%} density, {sc.get('recovery_epochs')} recovery epoch(s) per "
               f"step, scores from {scoring}, normalisation {norm}, "
               + (f"guard max_group_pruning={guard}" if guard is not None else "no guard (a layer keeps one channel)")
               + (f", ignore {ignore}" if ignore else "") + ".")] = None
    return list(lines)


def learning_curves(epochs: pd.DataFrame, path_stem: Path) -> list[Path]:
    """Test top-1 per epoch of the initial training of unpruned runs (pruned runs start from them),
    one line per run, one panel per dataset; PNG and PDF."""
    epochs = epochs[(epochs["pruning"] == "none") & (epochs.get("phase", "train") == "train")]
    datasets = list(dict.fromkeys(epochs["dataset"]))
    fig, axes = new_figure(1, len(datasets), (4.5 * len(datasets), 3.4))
    for ax, dataset in zip(axes[0], datasets):
        part = epochs[(epochs["dataset"] == dataset) & epochs["test_top1"].notna()]
        for (adapter, seed), run in part.groupby(["adapter", "seed"], sort=False):
            ax.plot(run["epoch"], run["test_top1"], marker="o", ms=3, label=f"{label(adapter)} (seed {seed})")
        ax.axhline(100.0 / part["num_classes"].iloc[0], ls="--", lw=1, color="grey", label="chance")
        style_axes(ax, label(dataset), "epoch")
    return save_figure(fig, path_stem)


def density_curves(steps: pd.DataFrame, path_stem: Path) -> list[Path]:
    """Test top-1 after recovery vs density (mean over seeds, ±std band), one panel per dataset."""
    datasets = list(dict.fromkeys(steps["dataset"]))
    fig, axes = new_figure(1, len(datasets), (4.8 * len(datasets), 3.6))
    for ax, dataset in zip(axes[0], datasets):
        part = steps[steps["dataset"] == dataset]
        for (adapter, pruning), run in part.groupby(["adapter", "pruning"], sort=False):
            curve = run.groupby("density")["top1"].agg(["mean", "std", "count"]).sort_index(ascending=False)
            x = 100 * curve.index.to_numpy()
            ax.plot(x, curve["mean"], marker="o", ms=3, label=f"{label(adapter)}, {label(pruning)}")
            if (curve["count"] > 1).any():
                ax.fill_between(x, curve["mean"] - curve["std"].fillna(0), curve["mean"] + curve["std"].fillna(0),
                                alpha=0.2)
        ax.invert_xaxis()
        style_axes(ax, label(dataset), "density (% of conv filters kept)")
    return save_figure(fig, path_stem)


def experiment_report(exp_dir: str | Path, results_dir: str | Path, name: str,
                      report: bool | str | None = None) -> dict[str, Path]:
    """From the runs under ``exp_dir``: ``tables/<name>.{csv,md}`` in the layout ``report`` names (None:
    the experiment config's, :func:`report_setting`): mean ± std over seeds, or with ``table1`` the
    paper's Table 1 and the files :func:`~spa.reporting.table1.table1_report` writes beside it; and
    ``tables/<name>_runs.csv`` (one row per run), ``figures/<name>_curves.{png,pdf}`` and, with pruned
    runs, ``tables/<name>_steps.csv`` and ``figures/<name>_density.{png,pdf}`` (accuracy vs density).
    Markdown tables state the runs' torch versions above the table, CSV ones in ``<name>_versions.json``."""
    from spa.reporting.table1 import table1_report
    results_dir = Path(results_dir)
    runs = collect_runs(exp_dir)
    if runs.empty:
        raise FileNotFoundError(f"no finished runs under {exp_dir}")
    tables = results_dir / "tables"
    atomic_write_text(tables / f"{name}_runs.csv", runs.drop(columns=["run_dir", "torch"]).to_csv(index=False))
    if (report_setting(name) if report is None else report) == "table1":
        outputs = {"table": table1_report(exp_dir, tables, name)["md"]}
    else:
        summary, versions = summarise(runs), torch_versions(runs)
        atomic_write_text(tables / f"{name}.csv", summary.to_csv(index=False, float_format="%.4f"))
        head = "\n".join([versions_line(versions), *budget_lines(runs)])
        atomic_write_text(tables / f"{name}.md", f"{head}\n\n" + markdown_table(summary))
        write_versions(tables / f"{name}_versions.json", versions, run_machines(exp_dir))
        outputs = {"table": tables / f"{name}.md"}
    outputs["figure"] = learning_curves(collect_epochs(exp_dir), results_dir / "figures" / f"{name}_curves")[0]
    steps = collect_steps(exp_dir)
    if not steps.empty and (steps["pruning"] != "none").any():
        pruned = steps[steps["pruning"] != "none"]
        keep = ["dataset", "backbone", "adapter", "pruning", "seed", "step", "density", "top1_before", "top1",
                "params_learned", "params_deployable", "macs", "macs_32"]
        atomic_write_text(tables / f"{name}_steps.csv", pruned[keep].to_csv(index=False, float_format="%.4f"))
        outputs["density figure"] = density_curves(pruned, results_dir / "figures" / f"{name}_density")[0]
    from spa.reporting.widths import widths_outputs
    outputs.update(widths_outputs(exp_dir, results_dir / "figures", name))
    return outputs
