"""The Pear table, effects and figure (experiment=pear_mini): per (data set, learner, ratio) the test
top-1 mean ± std over seeds, learned and stored parameters; the paired effects that answer "do sharing
and the knowledge checkpoint each add accuracy over prune-only?"; and Pear after channel pruning.

Learners are read from each run's ``pear.json`` (ratio, sharing, checkpoint), not from names:
ratio 0 is LoRA on Pear's schedule (full rank, or half the rank), no sharing and no checkpoint is
prune-only, sharing alone is prune + share, sharing with ``fold`` is Pear.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from spa.metrics.collapse import MARK
from spa.records import STEPS, SUMMARY, RunDir
from spa.reporting.collect import (
    any_collapsed,
    collapse_legend,
    flagged,
    run_collapsed,
    run_machines,
    versions_line,
    write_versions,
)
from spa.reporting.plotting import new_figure, save_figure, style_axes
from spa.reporting.report import dataset_rank, label, mean_std_cell
from spa.utils import atomic_write_text

ORDER = ["LoRA (full rank)", "LoRA (half rank)", "prune-only", "prune + share", "Pear (share + checkpoint)",
         "Pear (share + blend)"]
# (effect, learner, minus learner): what the reading compares, paired by seed at each ratio
EFFECTS = [("sharing", "prune + share", "prune-only"), ("checkpoint", "Pear (share + checkpoint)", "prune + share"),
           ("blend checkpoint", "Pear (share + blend)", "prune + share"),
           ("Pear over prune-only", "Pear (share + checkpoint)", "prune-only"),
           ("Pear over LoRA (half rank)", "Pear (share + checkpoint)", "LoRA (half rank)"),
           ("Pear over LoRA (full rank)", "Pear (share + checkpoint)", "LoRA (full rank)")]


def learner(record: dict, rank: int, full_rank: int) -> str:
    """The learner a Pear run is, from its record (see the module docstring)."""
    if not record["plan"]["pruned"] and record["plan"]["ratio"] == 0:
        return "LoRA (full rank)" if rank == full_rank else ("LoRA (half rank)" if 2 * rank == full_rank
                                                             else f"LoRA (rank {rank})")
    sharing, checkpoint = record["sharing"], record["checkpoint"]
    if sharing == "none":
        return "prune-only" if checkpoint == "none" else f"prune + {checkpoint}"
    if checkpoint == "none":
        return "prune + share" if sharing == "tied" else f"prune + share ({sharing})"
    if sharing == "tied" and checkpoint in ("fold", "blend"):
        return "Pear (share + checkpoint)" if checkpoint == "fold" else "Pear (share + blend)"
    return f"share ({sharing}) + {checkpoint}"


def pear_runs(runs_root: str | Path) -> pd.DataFrame:
    """One row per finished Pear run under ``runs_root`` (a pear.json beside its summary.json)."""
    rows = []
    for path in sorted(Path(runs_root).rglob(SUMMARY)):
        run = RunDir(path.parent)
        if not run.file("pear.json").is_file():
            continue
        summary, record = json.loads(path.read_text()), json.loads(run.file("pear.json").read_text())
        steps = pd.read_csv(run.file(STEPS))
        rows.append({"dataset": summary["dataset"], "adapter": summary["adapter"], "pruning": summary["pruning"],
                     "seed": summary["seed"], "rank": (summary.get("ranks") or {}).get("rank"),
                     "ratio": record["plan"]["ratio"], "after": record.get("after"), "record": record,
                     "top1": summary["metrics"]["test_top1"], "top1_start": steps["top1"].iloc[0],
                     "top1_after_step": steps["top1_before"].iloc[-1],
                     "learned": summary["params"]["trainable"], "stored": summary["params"]["stored"],
                     "macs": steps["macs"].iloc[-1], "density": steps["density"].iloc[-1],
                     "pruned": len(record["plan"]["pruned"]), "positions": len(record["plan"]["positions"]),
                     "with_donor": len(record.get("shared", {})), "unique": record["unique_adapters"],
                     "torch": (summary.get("versions") or {}).get("torch"), "run_dir": str(run.path),
                     "collapsed": run_collapsed(summary)})
    if not rows:
        raise FileNotFoundError(f"no finished Pear runs under {runs_root}: run the sweeps first (make pear-mini)")
    runs = pd.DataFrame(rows)
    full = runs.groupby("dataset")["rank"].transform("max")
    runs["learner"] = [learner(r, k, f) if not r.get("after") else f"after {r['after']}: {learner(r, k, k)}"
                       for r, k, f in zip(runs["record"], runs["rank"], full)]
    return runs.drop(columns="record")


def pear_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, learner, ratio), Pear on an unpruned network only."""
    plain = runs[runs["after"].isna()]
    agg = plain.groupby(["dataset", "learner", "ratio"]).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"),
        top1_after_step=("top1_after_step", "mean"), learned_k=("learned", "mean"), stored_k=("stored", "mean"),
        pruned=("pruned", "mean"), with_donor=("with_donor", "mean"), unique=("unique", "mean"),
        positions=("positions", "first"), collapsed=("collapsed", any_collapsed)).reset_index()
    agg[["learned_k", "stored_k"]] /= 1e3
    agg = agg.fillna({"top1_std": 0.0})
    rank = {name: i for i, name in enumerate(ORDER)}
    agg["_order"] = agg["learner"].map(lambda n: rank.get(n, len(ORDER)))
    return agg.sort_values(["dataset", "ratio", "_order"], ignore_index=True).drop(columns="_order")


def effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, ratio, effect): top-1 of one learner minus another, paired by seed; the baselines
    (ratio 0) are paired with every ratio."""
    plain = runs[runs["after"].isna()]
    rows = []
    for dataset, part in plain.groupby("dataset"):
        top1 = {(r.learner, r.ratio, r.seed): r.top1 for r in part.itertuples()}
        broken = {(r.learner, r.ratio, r.seed) for r in part.itertuples() if flagged(r.collapsed)}
        for ratio in sorted(set(part["ratio"]) - {0.0}):
            for effect, a, b in EFFECTS:
                ratio_b = 0.0 if b.startswith("LoRA") else ratio
                pairs = [((a, ratio, s), (b, ratio_b, s)) for s in sorted(set(part["seed"]))
                         if (a, ratio, s) in top1 and (b, ratio_b, s) in top1]
                diffs = [top1[x] - top1[y] for x, y in pairs]
                if diffs:
                    series = pd.Series(diffs)
                    rows.append({"dataset": dataset, "ratio": ratio, "effect": effect, "learner": a, "minus": b,
                                 "delta": series.mean(), "delta_std": series.std() if len(diffs) > 1 else 0.0,
                                 "seeds": len(diffs), "positive": int((series > 0).sum()),
                                 # a pair with a collapsed run says nothing about sharing or the checkpoint
                                 "evidence": not any(x in broken or y in broken for x, y in pairs)})
    return pd.DataFrame(rows)


def composition(runs: pd.DataFrame, runs_root: Path) -> pd.DataFrame:
    """Pear after channel pruning, one row per (dataset, model, seed): the channel-pruned SPLoRA run
    it started from, then each Pear run on it (ratio 0: the same epochs, no adapter pruned)."""
    rows, starts = [], {}
    for r in runs[runs["after"].notna()].itertuples():
        key = (r.dataset, r.after, r.adapter, r.seed)
        if key not in starts:
            start = RunDir(Path(r.run_dir).parents[2] / r.after / r.adapter / f"seed_{r.seed}")
            steps, summary = start.read_steps(), json.loads(start.file(SUMMARY).read_text())
            starts[key] = steps[0]["macs"]
            rows.append({"dataset": r.dataset, "seed": r.seed, "order": 0,
                         "model": f"SPLoRA r{r.rank}, {r.after}-pruned",
                         "density": steps[-1]["density"], "top1": summary["metrics"]["test_top1"],
                         "learned": summary["params"]["trainable"], "stored": summary["params"]["trainable"],
                         "macs": steps[-1]["macs"], "pruned": 0, "with_donor": 0,
                         "collapsed": run_collapsed(summary)})
        rows.append({"dataset": r.dataset, "seed": r.seed, "order": 1 + r.ratio,
                     "model": f"+ Pear (ratio {r.ratio})" if r.ratio else "+ the same epochs, no adapter pruned",
                     "density": r.density, "top1": r.top1, "learned": r.learned, "stored": r.stored, "macs": r.macs,
                     "pruned": r.pruned, "with_donor": r.with_donor, "collapsed": r.collapsed})
    return pd.DataFrame(rows)


def composition_table(combo: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, model) of :func:`composition`'s rows."""
    agg = combo.groupby(["dataset", "order", "model"]).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"), density=("density", "mean"),
        learned_k=("learned", "mean"), stored_k=("stored", "mean"), macs_m=("macs", "mean"),
        pruned=("pruned", "mean"), with_donor=("with_donor", "mean"),
        collapsed=("collapsed", any_collapsed)).reset_index()
    agg[["learned_k", "stored_k"]] /= 1e3
    agg["macs_m"] /= 1e6
    return agg.fillna({"top1_std": 0.0}).drop(columns="order")


def markdown(table: pd.DataFrame, fx: pd.DataFrame, combo: pd.DataFrame, versions: list[str]) -> str:
    lines = ["Pear (reconstructed, docs/method.md §7): test top-1 (%) mean ± std (seeds); after step: top-1 "
             "right after Pear's step, before the remaining training; learned (K): unique trainable tensors by "
             "identity (adapters, norms, biases, head); stored (K): learned + the folded residuals; donors: pruned "
             "positions that received one (mean over seeds).", "", versions_line(versions), ""]
    for dataset in sorted(table["dataset"].unique(), key=dataset_rank):
        part = table[table["dataset"] == dataset]
        rows = [{"learner": r.learner, "ratio": r.ratio if r.ratio else "-",
                 "top1": mean_std_cell(r.top1, r.top1_std, r.seeds, r.collapsed),
                 "after step": f"{r.top1_after_step:.2f}", "learned (K)": f"{r.learned_k:,.1f}",
                 "stored (K)": f"{r.stored_k:,.1f}",
                 "pruned / donors": f"{r.pruned:.0f} / {r.with_donor:.1f}" if r.pruned else "-"}
                for r in part.itertuples()]
        lines += [f"### {label(dataset)}", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    if not fx.empty:
        lines += ["### Effects (top-1 points, paired by seed: mean ± std, seeds where positive / seeds)", ""]
        fx = fx.sort_values("dataset", key=lambda c: c.map(dataset_rank),
                            kind="stable")
        rows = [{"data": label(r.dataset), "ratio": r.ratio, "effect": r.effect,
                 "compared": f"{r.learner} − {r.minus}", "delta": f"{r.delta:+.2f} ± {r.delta_std:.2f}",
                 "positive": f"{r.positive} / {r.seeds}",
                 "evidence": "yes" if r.evidence else f"not evidence ({MARK})"} for r in fx.itertuples()]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    if not combo.empty:
        lines += ["### Pear after channel pruning (SPLoRA adapters at the same positions, pruning.after)", ""]
        rows = [{"data": label(r.dataset), "model": r.model, "filter density": f"{r.density:.3f}",
                 "top1": mean_std_cell(r.top1, r.top1_std, r.seeds, r.collapsed),
                 "learned (K)": f"{r.learned_k:,.1f}", "stored (K)": f"{r.stored_k:,.1f}",
                 "MACs (M)": f"{r.macs_m:,.1f}",
                 "pruned / donors": f"{r.pruned:.0f} / {r.with_donor:.1f}" if r.pruned else "-"}
                for r in combo.itertuples()]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    marks = pd.concat([table["collapsed"], combo["collapsed"] if not combo.empty else pd.Series(dtype=object)])
    return "\n".join(lines) + collapse_legend(marks)


def figure(table: pd.DataFrame, figures_dir: Path, name: str) -> list[Path]:
    """Top-1 against learned parameters, a panel per data set, a marker per learner, a colour per ratio."""
    datasets = sorted(table["dataset"].unique(), key=dataset_rank)
    fig, axes = new_figure(1, len(datasets), (4.5 * len(datasets) + 3, 4))
    markers = dict(zip(ORDER, "osv^DP"))
    colours = {0.0: "C7", 0.25: "C0", 0.5: "C3"}
    for ax, dataset in zip(axes[0], datasets):
        for r in table[table["dataset"] == dataset].itertuples():
            legend = r.learner if not r.ratio else f"{r.learner}, ratio {r.ratio}"
            # learners of one ratio learn the same count: spread sideways by 1 % per learner to be seen
            dodge = 1 + 0.01 * (ORDER.index(r.learner) - 3.5) if r.ratio and r.learner in ORDER else 1
            ax.errorbar(r.learned_k * dodge, r.top1, yerr=r.top1_std, marker=markers.get(r.learner, "x"),
                        linestyle="none", color=colours.get(r.ratio, "C2"), capsize=2, label=legend)
        style_axes(ax, f"{label(dataset)}", "learned parameters (K; one ratio's learners spread by 1 %)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in axes[0][:-1]:
        ax.get_legend().remove()
    return save_figure(fig, figures_dir / f"{name}_params")


def pear_report(runs_root: str | Path, tables_dir: str | Path, figures_dir: str | Path, name: str) -> dict[str, Path]:
    """Write <name>.csv / .md / _effects.csv / _runs.csv (/ _after_channels.csv) / _versions.json and the figure."""
    runs = pear_runs(runs_root)
    table, fx, combo = pear_table(runs), effects(runs), composition(runs, Path(runs_root))
    combo_table = composition_table(combo) if not combo.empty else combo
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    versions = sorted({str(v) for v in runs["torch"].dropna()})
    out = {"csv": tables_dir / f"{name}.csv", "md": tables_dir / f"{name}.md",
           "effects": tables_dir / f"{name}_effects.csv", "runs": tables_dir / f"{name}_runs.csv"}
    atomic_write_text(out["csv"], table.round(4).to_csv(index=False))
    atomic_write_text(out["effects"], fx.round(4).to_csv(index=False))
    keep = ["dataset", "learner", "ratio", "after", "seed", "top1", "top1_start", "top1_after_step", "learned",
            "stored", "pruned", "with_donor", "unique", "macs", "collapsed"]
    atomic_write_text(out["runs"], runs[keep].sort_values(["dataset", "learner", "ratio", "seed"]).round(4)
                      .to_csv(index=False))
    if not combo.empty:
        out["after_channels"] = tables_dir / f"{name}_after_channels.csv"
        atomic_write_text(out["after_channels"], combo_table.round(4).to_csv(index=False))
    atomic_write_text(out["md"], markdown(table, fx, combo_table, versions))
    out["versions"] = write_versions(tables_dir / f"{name}_versions.json", versions, run_machines(runs_root))
    for i, path in enumerate(figure(table, figures_dir, name) if not table.empty else []):
        out[f"figure{i}"] = path
    return out
