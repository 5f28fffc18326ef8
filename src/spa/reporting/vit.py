"""The ViT table of experiment=vit_iclr (and vit_iclr_mini), and the ICLR version's ViT claim recomputed
from our runs: "For ViT-b/16 models, SPLoRA improves accuracy by an average of 43 %-points at 75 % pruned
weights while learning 6.8x fewer parameters".

Density here is in **weights**, as the authors' runner counted it: deployable (fused) parameters over
those of the unpruned network (``weight_density`` in steps.csv; their ``fused_params /
base_fused_params``). A run's steps rarely land on 25 % kept weights exactly, so every quantity at
that point (top-1, learned parameters) is interpolated linearly in weight density between the two
steps around it; a run that never reaches it has no value there. The claim reads:

- accuracy: per data set, mean over seeds of SPLoRA's top-1 at 25 % kept weights minus fine-pruning's,
  then the mean over the data sets that have both;
- parameters: per data set, fine-pruning's learned parameters at 25 % kept weights over SPLoRA's
  (means over seeds), then the mean over the same data sets.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from spa.metrics.collapse import MARK
from spa.reporting.collect import (
    any_collapsed,
    collapse_legend,
    collect_steps,
    flagged,
    run_machines,
    versions_line,
    write_versions,
)
from spa.reporting.plotting import new_figure, save_figure, style_axes
from spa.reporting.report import dataset_rank, label, mean_std_cell
from spa.utils import atomic_write_text

CLAIM_DENSITY = 0.25          # "75 % pruned weights"
PAPER_CLAIM = {"delta": 43.0, "ratio": 6.8}
BASELINE = "finetune"


def learner_label(adapter: str) -> str:
    return "fine-pruning" if adapter == BASELINE else label(adapter)


def at_density(steps: pd.DataFrame, column: str, density: float = CLAIM_DENSITY) -> float | None:
    """``column`` at ``density`` kept weights, linear in ``weight_density`` between the two steps around
    it (a step exactly there: its value); None where the run's steps do not reach it."""
    rows = steps.sort_values("step")
    wd, values = rows["weight_density"].to_list(), rows[column].to_list()
    for (d0, v0), (d1, v1) in zip(zip(wd, values), zip(wd[1:], values[1:])):
        if d0 == density:
            return float(v0)
        if d0 > density >= d1:
            return float(v0 + (d0 - density) / (d0 - d1) * (v1 - v0))
    return float(values[-1]) if wd and wd[-1] == density else None


def architecture_counts(timm_name: str, num_classes: int, learners: dict[str, tuple[str, dict]], *,
                        step_fraction: float = 0.05, density: float = CLAIM_DENSITY, frozen: tuple[str, ...] = (
                            "patch_embed",), kwargs: dict | None = None, image_size: int = 224) -> list[dict]:
    """Learned parameters of each learner (``{label: (adapter kind, options)}``) on ``timm_name``,
    unpruned and at ``density`` kept weights, pruned as experiment=vit_iclr prunes (weight magnitude,
    ``pruning.scope=local``, ``step_fraction`` steps, ``frozen`` modules; :func:`~spa.pruning.dry_run.weight_pruned`):
    counted on randomly initialised weights, which is exact for any weights, since every block keeps
    the same number of heads and MLP channels whichever ones go. No training, no data."""
    from spa.metrics import count_parameters
    from spa.models import BackboneSpec
    from spa.pruning.dry_run import weight_pruned
    backbone = BackboneSpec(timm_name, timm_name, num_classes, kwargs=tuple((kwargs or {}).items()))
    rows = []
    for name, (kind, options) in learners.items():
        steps = []
        for step, _, model in weight_pruned(backbone, kind, options, step_fraction, step_fraction,
                                            (image_size, image_size), scope="local", frozen=frozen):
            counts = count_parameters(model)
            steps.append({"step": step, "deployable": counts.deployable, "params_learned": counts.trainable})
            steps[-1]["weight_density"] = counts.deployable / steps[0]["deployable"]
            if steps[-1]["weight_density"] <= density:
                break
        rows.append({"learner": name, "num_classes": num_classes, "learned_unpruned": steps[0]["params_learned"],
                     "learned_at": at_density(pd.DataFrame(steps), "params_learned", density)})
    return rows


def collapsed_at(steps: pd.DataFrame, density: float = CLAIM_DENSITY) -> bool | None:
    """Whether either step :func:`at_density` interpolates between is collapsed (spa.metrics.collapse);
    None where the run does not reach ``density`` or recorded no flag."""
    if "collapsed" not in steps:
        return None
    rows = steps.sort_values("step")
    wd, flags = rows["weight_density"].to_list(), rows["collapsed"].to_list()
    for (d0, f0), (d1, f1) in zip(zip(wd, flags), zip(wd[1:], flags[1:])):
        if d0 == density:
            return flagged(f0)
        if d0 > density >= d1:
            return flagged(f0) or flagged(f1)
    return flagged(flags[-1]) if wd and wd[-1] == density else None


def vit_runs(runs_root: str | Path, density: float = CLAIM_DENSITY) -> pd.DataFrame:
    """One row per finished pruned run under ``runs_root`` whose steps.csv counts weights: its start
    (step 0), its values at ``density`` kept weights and at its last step."""
    steps = collect_steps(runs_root)
    if steps.empty or "weight_density" not in steps:
        raise FileNotFoundError(f"no finished pruned runs with weight densities under {runs_root}: run the sweep "
                                f"first (python scripts/run.py -m experiment=vit_iclr_mini)")
    rows = []
    for (dataset, _, adapter, pruning, seed), run in steps[steps["pruning"] != "none"].groupby(
            ["dataset", "backbone", "adapter", "pruning", "seed"]):
        run = run.sort_values("step")
        first, last = run.iloc[0], run.iloc[-1]
        rows.append({"dataset": dataset, "adapter": adapter, "learner": learner_label(adapter), "pruning": pruning,
                     "seed": seed, "top1_unpruned": first["top1"], "learned_unpruned": first["params_learned"],
                     "top1_at": at_density(run, "top1", density),
                     "learned_at": at_density(run, "params_learned", density),
                     "steps": int(last["step"]), "final_weight_density": last["weight_density"],
                     "final_density": last["density"], "top1_final": last["top1"],
                     "macs_ratio": last["macs"] / first["macs"], "torch": first.get("torch"),
                     "collapsed_unpruned": flagged(first.get("collapsed")), "collapsed_at": collapsed_at(run, density),
                     "collapsed_final": flagged(last.get("collapsed"))})
    return pd.DataFrame(rows)


def vit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, learner)."""
    agg = runs.groupby(["dataset", "adapter", "learner"]).agg(
        seeds=("seed", "nunique"), top1_unpruned=("top1_unpruned", "mean"), top1_unpruned_std=("top1_unpruned", "std"),
        top1_at=("top1_at", "mean"), top1_at_std=("top1_at", "std"), reached=("top1_at", "count"),
        learned_unpruned_k=("learned_unpruned", "mean"), learned_at_k=("learned_at", "mean"),
        steps=("steps", "mean"), final_weight_density=("final_weight_density", "mean"),
        final_density=("final_density", "mean"), top1_final=("top1_final", "mean"),
        top1_final_std=("top1_final", "std"), macs_ratio=("macs_ratio", "mean"),
        collapsed_unpruned=("collapsed_unpruned", any_collapsed), collapsed_at=("collapsed_at", any_collapsed),
        collapsed_final=("collapsed_final", any_collapsed)).reset_index()
    agg[["learned_unpruned_k", "learned_at_k"]] /= 1e3
    agg = agg.fillna({c: 0.0 for c in ("top1_unpruned_std", "top1_at_std", "top1_final_std")})
    agg["_baseline"] = agg["adapter"] != BASELINE
    return agg.sort_values(["dataset", "_baseline", "adapter"], key=lambda c: c.map(dataset_rank)
                           if c.name == "dataset" else c, ignore_index=True).drop(columns="_baseline")


def claim(table: pd.DataFrame, learner: str = "splora_r8") -> dict:
    """The claim from :func:`vit_table`'s rows (module docstring): per data set and mean over data sets."""
    per = []
    for dataset, part in table.groupby("dataset", sort=False):
        rows = {r.adapter: r for r in part.itertuples()}
        if learner in rows and BASELINE in rows and rows[learner].reached and rows[BASELINE].reached:
            a, b = rows[learner], rows[BASELINE]
            per.append({"dataset": dataset, "delta": a.top1_at - b.top1_at, "ratio": b.learned_at_k / a.learned_at_k,
                        "collapsed": flagged(a.collapsed_at) or flagged(b.collapsed_at)})
    per = sorted(per, key=lambda r: dataset_rank(r["dataset"]))
    if not per:
        return {"per_dataset": [], "delta": None, "ratio": None}
    return {"per_dataset": per, "delta": sum(r["delta"] for r in per) / len(per),
            "ratio": sum(r["ratio"] for r in per) / len(per)}


def claims_markdown(result: dict, versions: list[str], density: float = CLAIM_DENSITY) -> str:
    pct = f"{100 * density:.0f} %"

    def per(key: str, fmt: str) -> str:
        return ", ".join(f"{label(r['dataset'])} {format(r[key], fmt)}" for r in result["per_dataset"]) or "—"
    ours_delta = "—" if result["delta"] is None else f"{result['delta']:+.2f}"
    ours_ratio = "—" if result["ratio"] is None else f"{result['ratio']:.1f}×"
    broken = [label(r["dataset"]) for r in result["per_dataset"] if r.get("collapsed")]
    evidence = f"not evidence: collapsed on {', '.join(broken)} ({MARK})" if broken else "yes"
    rows = [{"claim": f"SPLoRA-r8 − fine-pruning, top-1 at {pct} kept weights", "ours": ours_delta,
             "paper": f"+{PAPER_CLAIM['delta']:.0f}", "ours per dataset": per("delta", "+.2f"), "evidence": evidence},
            {"claim": f"fine-pruning / SPLoRA-r8 learned parameters at {pct} kept weights", "ours": ours_ratio,
             "paper": f"{PAPER_CLAIM['ratio']}×", "ours per dataset": per("ratio", ".1f"),
             "evidence": "yes (parameter counts do not depend on accuracy)"}]
    return "\n".join([
        versions_line(versions), "",
        f"The ICLR version's ViT claim, recomputed from our runs: per data set, the mean over seeds at {pct} kept "
        f"weights (deployable, fused parameters / the unpruned network's), each run interpolated linearly in weight "
        f"density between its two steps around {pct}; then the mean over the data sets with both learners.", "",
        pd.DataFrame(rows).to_markdown(index=False), ""])


def markdown(table: pd.DataFrame, versions: list[str], density: float = CLAIM_DENSITY) -> str:
    pct = f"{100 * density:.0f} %"
    rows = [{"data": label(r.dataset), "learner": r.learner, "unpruned top1": mean_std_cell(r.top1_unpruned,
             r.top1_unpruned_std, r.seeds, r.collapsed_unpruned),
             f"top1 at {pct} weights": mean_std_cell(r.top1_at, r.top1_at_std, r.reached, r.collapsed_at)
             if r.reached else "—",
             "learned (K) unpruned": f"{r.learned_unpruned_k:,.1f}",
             f"learned (K) at {pct}": f"{r.learned_at_k:,.1f}" if r.reached else "—",
             "last step": f"{r.steps:.0f}", "weights / filters kept": f"{r.final_weight_density:.3f} / "
                                                                     f"{r.final_density:.3f}",
             "top1 at last step": mean_std_cell(r.top1_final, r.top1_final_std, r.seeds, r.collapsed_final),
             "MACs kept": f"{r.macs_ratio:.3f}"} for r in table.itertuples()]
    return "\n".join([
        f"ViT fine-pruning vs SPLoRA: test top-1 (%) mean ± std (seeds); at {pct} weights: interpolated in weight "
        f"density (fused parameters / the unpruned network's) between the two steps around it; learned: trainable "
        f"parameters; last step: where the loop stopped (the first step at or below its target weight density), "
        f"with its weight and filter densities and the MACs it keeps.", "", versions_line(versions), "",
        pd.DataFrame(rows).to_markdown(index=False), ""]) + collapse_legend(
            pd.concat([table["collapsed_unpruned"], table["collapsed_at"], table["collapsed_final"]]))


def figure(steps: pd.DataFrame, figures_dir: Path, name: str, density: float = CLAIM_DENSITY) -> list[Path]:
    """Top-1 against kept weights, a panel per data set, a line per learner (means over seeds per step)."""
    steps = steps[steps["pruning"] != "none"]
    datasets = sorted(steps["dataset"].unique(), key=dataset_rank)
    fig, axes = new_figure(1, len(datasets), (4.5 * len(datasets), 3.8))
    for ax, dataset in zip(axes[0], datasets):
        part = steps[steps["dataset"] == dataset]
        for adapter, runs in part.groupby("adapter"):
            curve = runs.groupby("step").agg(wd=("weight_density", "mean"), top1=("top1", "mean"),
                                             std=("top1", "std")).fillna({"std": 0.0})
            ax.errorbar(curve["wd"], curve["top1"], yerr=curve["std"], marker="o", markersize=3, capsize=2,
                        label=learner_label(adapter))
        ax.axvline(density, color="0.6", linestyle=":", linewidth=1)
        ax.invert_xaxis()
        style_axes(ax, label(dataset), "kept weights (fused parameters / unpruned)")
    axes[0][-1].legend(fontsize=8)
    for ax in axes[0][:-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    return save_figure(fig, figures_dir / f"{name}_weights")


def vit_report(runs_root: str | Path, tables_dir: str | Path, figures_dir: str | Path, name: str) -> dict[str, Path]:
    """Write <name>.csv / .md / _runs.csv / _claims.md / _versions.json and the figure."""
    runs = vit_runs(runs_root)
    table = vit_table(runs)
    versions = sorted({str(v) for v in runs["torch"].dropna()})
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    out = {"csv": tables_dir / f"{name}.csv", "md": tables_dir / f"{name}.md", "runs": tables_dir / f"{name}_runs.csv",
           "claims": tables_dir / f"{name}_claims.md"}
    atomic_write_text(out["csv"], table.round(4).to_csv(index=False))
    atomic_write_text(out["runs"], runs.drop(columns="torch").sort_values(["dataset", "adapter", "seed"])
                      .round(4).to_csv(index=False))
    atomic_write_text(out["md"], markdown(table, versions))
    atomic_write_text(out["claims"], claims_markdown(claim(table), versions))
    out["versions"] = write_versions(tables_dir / f"{name}_versions.json", versions, run_machines(runs_root))
    for i, path in enumerate(figure(collect_steps(runs_root), figures_dir, name)):
        out[f"figure{i}"] = path
    return out
