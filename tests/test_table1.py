"""A synthetic run tree -> Table 1 in the paper's layout (golden values), the comparison with the
paper, the partial-table flag and the claims on our own numbers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from spa.reporting import collect_steps
from spa.reporting.paper import load_table1
from spa.reporting.table1 import aggregate, cells, wide, write_table1

# (adapter, pruning, seed) -> [(density, top1, learned params, MACs at 32 px)], one tuple per step
RUNS = {
    ("finetune", "none", 1): [(1.0, 97.0, 23_520_842, 1_300e6)],
    ("finetune", "none", 2): [(1.0, 96.0, 23_520_842, 1_300e6)],
    ("splora_r8", "none", 1): [(1.0, 95.0, 466_338, 1_300e6)],
    ("splora_r8", "none", 2): [(1.0, 95.5, 466_338, 1_300e6)],
    ("finetune", "taylor", 1): [(1.0, 97.0, 23_520_842, 1_300e6), (0.5, 96.5, 9e6, 800e6),
                                (0.3004, 96.0, 4_000_000, 500e6), (0.0998, 88.0, 600_000, 240e6)],
    ("finetune", "taylor", 2): [(1.0, 96.0, 23_520_842, 1_300e6), (0.5, 96.0, 9e6, 800e6),
                                (0.2998, 95.0, 4_200_000, 520e6), (0.1001, 90.0, 580_000, 236e6)],
    ("splora_r8", "taylor", 1): [(1.0, 95.0, 466_338, 1_300e6), (0.3001, 94.0, 200_000, 560e6),
                                 (0.1, 91.0, 128_000, 243e6)],
    ("splora_r8", "taylor", 2): [(1.0, 95.5, 466_338, 1_300e6), (0.3, 93.0, 210_000, 570e6),
                                 (0.1, 92.0, 129_000, 245e6)],
}


def run_tree(root: Path) -> Path:
    for (adapter, pruning, seed), steps in RUNS.items():
        run = root / "cifar10" / "resnet50" / pruning / adapter / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"dataset": "cifar10", "backbone": "resnet50",
                                                     "adapter": adapter, "pruning": pruning, "seed": seed}))
        pd.DataFrame([{"step": i, "density": d, "top1": a, "params_learned": p, "macs_32": m}
                      for i, (d, a, p, m) in enumerate(steps)]).to_csv(run / "steps.csv", index=False)
    return root


def test_golden_table(tmp_path):
    steps = collect_steps(run_tree(tmp_path / "runs"))
    long = aggregate(cells(steps))
    table = wide(long)
    got = table[["pruning", "learning", "density", "params_k", "flops_m", "cifar10", "cifar10_std",
                 "cifar10_seeds"]].round(4).values.tolist()
    assert got == [
        ["none", "finetune", 1.0, 23520.842, 1300.0, 96.5, 0.7071, 2],
        ["none", "lora_r8", 1.0, 466.338, 1300.0, 95.25, 0.3536, 2],
        ["taylor", "finetune", 0.3, 4100.0, 510.0, 95.5, 0.7071, 2],
        ["taylor", "splora_r8", 0.3, 205.0, 565.0, 93.5, 0.7071, 2],
        ["taylor", "finetune", 0.1, 590.0, 238.0, 89.0, 1.4142, 2],
        ["taylor", "splora_r8", 0.1, 128.5, 244.0, 91.5, 0.7071, 2],
    ]


def test_written_tables_compare_with_the_paper_and_flag_partial_tables(tmp_path):
    steps = collect_steps(run_tree(tmp_path / "runs"))
    paths = write_table1(steps, load_table1(), tmp_path / "tables")
    md = paths["md"].read_text()
    assert md.startswith("Table 1 (partial: 0 of 6 cells have 3 seeds)")
    assert "91.50 ± 0.71 (2) [+2.50]" in md                     # SPLoRA-r8 vs fine-pruning, Taylor, 10 %
    vs = pd.read_csv(paths["vs_csv"])
    cell = vs[(vs.pruning == "taylor") & (vs.learning == "splora_r8") & (vs.density == 0.1) & (vs.dataset == "cifar10")]
    assert cell[["top1", "paper", "diff"]].values.tolist() == [[91.5, 91.22, pytest.approx(0.28)]]
    claims = paths["claims"].read_text()
    assert re.search(r"10 % density\s*\|\s*\|\s*\+6\.91\s*\|", claims)     # no r32 runs here; the paper's +6.91
    assert re.search(r"30 % density\s*\|\s*-2\.00\s*\|\s*-1\.60\s*\|", claims)  # ours 93.5 - 95.5; paper -1.60
    assert paths["tex"].read_text().lstrip().startswith("\\begin{tabular}")


def test_figures_are_drawn_from_the_curves_table(tmp_path):
    from spa.reporting.figures import write_figures
    steps = collect_steps(run_tree(tmp_path / "runs"))
    paths = write_table1(steps, load_table1(), tmp_path / "tables")
    curve = pd.read_csv(paths["curves"])
    r8 = curve[(curve.learning == "splora_r8")]
    assert r8[["density", "top1", "seeds"]].values.tolist() == [[1.0, 95.25, 2], [0.3, 93.5, 2], [0.1, 91.5, 2]]
    assert curve[curve.learning == "finetune"]["density"].tolist() == [1.0, 0.5, 0.3, 0.1]
    figures = write_figures(paths["curves"], tmp_path / "figures", "table1")
    assert sorted(p.name for p in figures) == sorted(f"table1_{kind}_cifar10.{ext}" for kind in ("figure6", "density")
                                                     for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 5_000 for p in figures)
