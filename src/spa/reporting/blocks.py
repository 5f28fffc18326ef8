"""The block-SPA table and figures (experiment=block_spa_mini): accuracy, learned parameters and
nonzero deployed weights per (data set, block-pruning method, learner, block density), mean ± std
over seeds, from the runs' steps.csv; and the reading of "far fewer parameters than pruning with
fine-tuning": per density, how many times fewer parameters SPLoPA learns and what accuracy it gives up.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import torch

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
from spa.reporting.plotting import new_figure, save_figure, style_axes
from spa.reporting.report import dataset_rank, label, mean_std_cell
from spa.utils import atomic_write_text

LEARNERS = {"finetune": "Fine-pruning", "splopa_r64": "SPLoPA-64", "splopa_r128": "SPLoPA-128"}
METHODS = {"block_magnitude": "magnitude", "block_movement": "movement", "block_soft_movement": "soft movement",
           "block_magnitude_hybrid": "magnitude, hybrid", "block_movement_hybrid": "movement, hybrid"}
STYLES = {"block_magnitude": "-", "block_movement": "--", "block_soft_movement": (0, (1, 3)),
          "block_magnitude_hybrid": ":", "block_movement_hybrid": "-."}


def block_steps(runs_root: str | Path) -> pd.DataFrame:
    """Every stage row of the block-pruned runs (step 0: the unpruned model they start from)."""
    steps = collect_steps(runs_root)
    if steps.empty:
        raise FileNotFoundError(f"no finished runs under {runs_root}: run the sweep first")
    steps = steps[steps["pruning"].isin(METHODS)]
    if steps.empty:
        raise FileNotFoundError(f"no block-pruned runs under {runs_root} (pruning=block_*)")
    if "params_nonzero" not in steps:
        steps = steps.assign(params_nonzero=steps["params_deployable"])
    if "collapsed" not in steps:        # runs from before steps.csv recorded it
        steps = steps.assign(collapsed=None)
    return steps.assign(density=steps["density"].round(2))


def block_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, pruning, adapter, density)."""
    agg = steps.groupby(["dataset", "pruning", "adapter", "density"]).agg(
        top1=("top1", "mean"), top1_std=("top1", "std"), seeds=("seed", "nunique"),
        learned_k=("params_learned", "mean"), nonzero_k=("params_nonzero", "mean"),
        collapsed=("collapsed", any_collapsed)).reset_index()
    agg[["learned_k", "nonzero_k"]] /= 1e3
    agg = agg.fillna({"top1_std": 0.0})
    order = {"adapter": list(LEARNERS), "pruning": list(METHODS)}
    rank = lambda col: col.map({v: i for i, v in enumerate(order[col.name])}) if col.name in order else col  # noqa: E731
    return agg.sort_values(["dataset", "pruning", "density", "adapter"], ascending=[True, True, False, True],
                           key=rank, ignore_index=True)


def versus_fine_pruning(table: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, SPLoPA learner, density): fine-pruning's learned parameters over
    SPLoPA's ("x fewer") and the top-1 difference (SPLoPA − fine-pruning), same method and density."""
    keys = ["dataset", "pruning", "density"]
    ft = table[table["adapter"] == "finetune"].set_index(keys)
    rows = []
    for _, row in table[table["adapter"] != "finetune"].iterrows():
        key = tuple(row[k] for k in keys)
        if key not in ft.index:
            continue
        base = ft.loc[key]
        rows.append({**{k: row[k] for k in keys}, "adapter": row["adapter"],
                     "fewer": base["learned_k"] / row["learned_k"], "top1": row["top1"], "ft_top1": base["top1"],
                     "delta": row["top1"] - base["top1"], "collapsed": flagged(row["collapsed"]),
                     "ft_collapsed": flagged(base["collapsed"])})
    versus = pd.DataFrame(rows)
    if versus.empty:
        return versus
    # a difference with a collapsed side says nothing about SPLoPA against fine-pruning
    return versus.assign(evidence=~(versus["collapsed"] | versus["ft_collapsed"]))


def deployed_model(run_dir: str | Path) -> tuple[torch.nn.Module, tuple[int, int]]:
    """A run's ``model.pt`` (the fused, plain model, pruned blocks zero) and its input size."""
    from omegaconf import OmegaConf

    from spa.models import load_model_file
    from spa.saved import load_backbone
    run_dir = Path(run_dir)
    payload = load_model_file(run_dir / "model.pt", mmap=True)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    b = payload["backbone"]
    model, _ = load_backbone(b["timm_name"], len(payload["classes"]), weights=str(run_dir / "model.pt"),
                             cifar_stem=b.get("cifar_stem", False), kwargs=b.get("kwargs"), load_head=True)
    size = int(cfg.dataset.image_size)
    return model.eval(), (size, size)


def crop_rows(runs_root: str | Path, latency_repeats: int = 0, batch: int = 8) -> pd.DataFrame:
    """Per block-pruned run: its final model's MACs and parameters dense and after cropping the
    channels no layer reads (``spa.pruning.blocks.crop``, exact), and with ``latency_repeats`` the
    median CPU latency of both (interleaved, batch ``batch``) and their ratio."""
    import copy

    from spa.pruning.blocks import crop
    from spa.pruning.session import count_macs
    from spa.utils import timed
    rows = []
    for path in sorted(Path(runs_root).rglob("pruning.json")):
        record = json.loads(path.read_text())
        if record.get("structure") != "blocks" or not (path.parent / "model.pt").is_file():
            continue
        summary = json.loads((path.parent / "summary.json").read_text())
        dense, size = deployed_model(path.parent)
        cropped = copy.deepcopy(dense)
        result = crop(cropped, size)
        probe = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, got = dense(probe), cropped(probe)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())):
            raise RuntimeError(f"cropping changed the outputs of {path.parent} (max difference "
                               f"{float((got - expected).abs().max()):.3g}): a bug, please report it")
        row = {"dataset": summary["dataset"], "pruning": summary["pruning"], "adapter": summary["adapter"],
               "seed": summary["seed"], "density": round(summary["metrics"]["density"], 2),
               "cropped_filters": result["cropped_filters"], "filters": result["filters"],
               "macs": count_macs(dense, size), "macs_cropped": count_macs(cropped, size),
               "params": sum(p.numel() for p in dense.parameters()),
               "params_cropped": sum(p.numel() for p in cropped.parameters())}
        if latency_repeats:
            x = torch.randn(batch, 3, *size)
            with torch.no_grad():
                times = timed({"dense": partial(dense, x), "cropped": partial(cropped, x)}, torch.device("cpu"),
                              repeats=latency_repeats, warmup=2)
            row.update(latency_ms=times["dense"] * 1e3, latency_cropped_ms=times["cropped"] * 1e3,
                       speedup=times["dense"] / times["cropped"])
        rows.append(row)
    return pd.DataFrame(rows)


def crop_markdown(rows: pd.DataFrame) -> str:
    """Mean over seeds per (dataset, method, learner) of the cropping of the final models."""
    keys = ["dataset", "pruning", "adapter", "density"]
    values = {c: (c, "mean") for c in ("cropped_filters", "filters", "macs", "macs_cropped", "params",
                                       "params_cropped", "speedup") if c in rows}
    agg = rows.groupby(keys, sort=False).agg(**values).reset_index()
    shown = pd.DataFrame({
        "dataset": agg["dataset"].map(label), "method": agg["pruning"].map(METHODS),
        "learning": agg["adapter"].map(LEARNERS),
        "block density": (agg["density"] * 100).round().astype(int).astype(str) + "%",
        "channels cropped": [f"{c:,.0f} / {f:,.0f}" for c, f in zip(agg["cropped_filters"], agg["filters"])],
        "MACs cropped / dense": (agg["macs_cropped"] / agg["macs"]).map("{:.3f}".format),
        "params cropped / dense": (agg["params_cropped"] / agg["params"]).map("{:.3f}".format)})
    if "speedup" in agg:
        shown["latency dense / cropped"] = agg["speedup"].map("{:.2f}x".format)
    return shown.to_markdown(index=False)


def markdown(table: pd.DataFrame, versions: list[str]) -> str:
    """Per data set: a row per (method, density), top-1 of each learner side by side, and their
    learned parameters (K) and the deployed nonzero weights (K, the same masks for all learners)."""
    lines = ["Block SPA: test top-1 (%) mean ± std (seeds) per block density (kept / original 32 × 32 blocks of the "
             "masked matrices). Learned parameters (K) leave out the pruned blocks' terms; nonzero (K): the "
             "deployed weights a sparse format stores (the dense model.pt keeps the zeros). SPLoPA against "
             "fine-pruning, same method and density: block_spa_mini_vs_fine_pruning.csv.",
             "", versions_line(versions), ""]
    learners = [a for a in LEARNERS if a in set(table["adapter"])]
    for dataset in sorted(table["dataset"].unique(), key=dataset_rank):
        part = table[table["dataset"] == dataset]
        rows = []
        for (pruning, density), cell in part.groupby(["pruning", "density"], sort=False):
            by = cell.set_index("adapter")
            row = {"method": METHODS.get(pruning, pruning), "density": f"{round(density * 100)}%"}
            for a in learners:
                row[LEARNERS[a]] = mean_std_cell(by.loc[a, "top1"], by.loc[a, "top1_std"], by.loc[a, "seeds"],
                                                 by.loc[a, "collapsed"]) if a in by.index else ""
            row["learned (K): " + " / ".join(LEARNERS[a] for a in learners)] = " / ".join(
                f"{by.loc[a, 'learned_k']:,.1f}" if a in by.index else "-" for a in learners)
            row["nonzero (K)"] = f"{cell['nonzero_k'].iloc[0]:,.1f}"
            rows.append(row)
        lines += [f"### {label(dataset)}", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    return "\n".join(lines) + collapse_legend(table["collapsed"])


def figures(table: pd.DataFrame, figures_dir: Path, name: str) -> list[Path]:
    """Per data set: top-1 vs block density and top-1 vs learned parameters, a line per (learner, method)."""
    paths = []
    for dataset, part in table.groupby("dataset"):
        for kind, x, xlabel in (("density", "density", "block density (kept / original blocks)"),
                                ("params", "learned_k", "learned parameters (K, log scale)")):
            fig, axes = new_figure(1, 1, (8, 4))
            ax = axes[0][0]
            colours = {a: f"C{i}" for i, a in enumerate(LEARNERS)}
            for (pruning, adapter), line in part.groupby(["pruning", "adapter"]):
                line = line.sort_values("density")
                ax.errorbar(line[x], line["top1"], yerr=line["top1_std"], marker="o" if adapter == "finetune" else "s",
                            markersize=3, linestyle=STYLES.get(pruning, "-"), color=colours.get(adapter), capsize=2,
                            label=f"{LEARNERS.get(adapter, adapter)}, {METHODS.get(pruning, pruning)}")
            if kind == "params":
                ax.set_xscale("log")
            style_axes(ax, f"{label(dataset)}: block pruning", xlabel)
            ax.set_ylabel("top-1 (%)")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            paths += save_figure(fig, figures_dir / f"{name}_{kind}_{dataset}")
    return paths


def block_report(runs_root: str | Path, tables_dir: str | Path, figures_dir: str | Path, name: str,
                 latency_repeats: int = 0) -> dict[str, Path]:
    """Write <name>.csv / .md / _steps.csv / _crop.csv / _versions.json and the figures; returns
    their paths. ``latency_repeats`` > 0 also times the final models dense and cropped."""
    steps = block_steps(runs_root)
    cropping = crop_rows(runs_root, latency_repeats)
    table = block_table(steps)
    versus = versus_fine_pruning(table)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    versions = torch_versions(steps)
    out = {"csv": tables_dir / f"{name}.csv", "md": tables_dir / f"{name}.md",
           "versus": tables_dir / f"{name}_vs_fine_pruning.csv", "steps": tables_dir / f"{name}_steps.csv"}
    atomic_write_text(out["csv"], table.round(4).to_csv(index=False))
    atomic_write_text(out["versus"], versus.round(4).to_csv(index=False))
    keep = ["dataset", "pruning", "adapter", "seed", "step", "density", "top1", "params_learned", "params_nonzero",
            "time_s", "collapsed", "narrowest_unit", "narrowest_fraction"]
    keep = [k for k in keep if k in steps]
    atomic_write_text(out["steps"], steps[keep].sort_values(keep[:5]).to_csv(index=False))
    text = markdown(table, versions)
    if not cropping.empty:
        out["crop"] = tables_dir / f"{name}_crop.csv"
        atomic_write_text(out["crop"], cropping.round(4).to_csv(index=False))
        text += ("\n### Cropping the final models\n\nChannels that no layer reads any more (every consumer's "
                 "input column pruned) removed from the fused model, with their producers' rows, BatchNorm "
                 "entries and depthwise filters: exact (the outputs do not change). MACs at the run's input size"
                 + (", latency: median CPU forward (batch 8)" if latency_repeats else "") + "; mean over seeds.\n\n"
                 + crop_markdown(cropping) + "\n")
    atomic_write_text(out["md"], text)
    out["versions"] = write_versions(tables_dir / f"{name}_versions.json", versions, run_machines(runs_root))
    for i, path in enumerate(figures(table, figures_dir, name)):
        out[f"figure{i}"] = path
    return out
