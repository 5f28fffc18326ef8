"""A synthetic run tree -> Table 1 in the paper's layout (golden values), the comparison with the
paper, the partial-table flag and the claims on our own numbers; datasets beyond the paper's (the
ICLR grid's CIFAR-100) and SPPaRA; one writer per table file; the torch version in every header."""
from __future__ import annotations

import json
import re
import sys

import matplotlib.image
import pandas as pd
import pytest
import yaml
from helpers import RUNS, iclr_tree, run_tree
from scripts_path import load_script

from spa.reporting import collect_steps, experiment_report
from spa.reporting.paper import load_table1
from spa.reporting.table1 import aggregate, cells, table1_report, wide, write_table1


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
    tex = paths["tex"].read_text()
    assert tex.startswith("% torch 2.14.1\n\\begin{tabular}")
    assert "taylor & splora_r8 & 0.10 & 128.50 & 0.71 & 244.00 & 1.41 & 91.50 & 0.71 & 2 &" in tex


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
    for png in (p for p in figures if p.suffix == ".png"):     # one criterion: one column of panels, drawn
        image = matplotlib.image.imread(png)
        assert image.shape[:2] == ((832, 468) if "figure6" in png.name else (442, 468)) and image.std() > 0.05
    assert all(p.read_bytes().startswith(b"%PDF") and p.stat().st_size > 5_000 for p in figures if p.suffix == ".pdf")


def test_datasets_come_from_the_runs_so_cifar100_and_sppara_rows_are_in_table1(tmp_path):
    """experiment=table1_iclr adds CIFAR-100 and SPPaRA: both must be in the tables (issue 13, item 5)."""
    paths = table1_report(iclr_tree(tmp_path / "runs"), tmp_path / "tables", "table1_iclr")
    table = pd.read_csv(paths["csv"])
    assert list(table.columns[7:]) == [f"{d}{s}" for d in ("cifar10", "flowers102", "cats_vs_dogs", "cifar100")
                                       for s in ("", "_std", "_seeds", "_collapsed")]
    cell = table[(table.pruning == "taylor") & (table.learning == "sppara") & (table.density == 0.1)]
    assert cell[["cifar10", "cifar100", "cifar100_std", "cifar100_seeds", "flowers102", "cats_vs_dogs"]].round(4
                                                                                ).values.tolist() == [
        [89.5, 59.5, 0.7071, 2, 79.5, 90.5]]
    assert table[(table.pruning == "none") & (table.learning == "sppara")]["cifar100"].tolist() == [64.25]
    assert table[(table.pruning == "taylor") & (table.learning == "finetune") & (table.density == 0.1)][
        "cifar100"].tolist() == [59.0]
    md = paths["md"].read_text()
    assert md.startswith("Table 1 (partial: 0 of 36 cells have 3 seeds)") and "\n\ntorch 2.14.1\n\n|" in md
    header = next(line for line in md.splitlines() if line.startswith("| criterion"))
    assert re.search(r"CIFAR-10 .*\| Flowers 102 .*\| Cats & Dogs .*\| CIFAR-100 +\|$", header)
    sppara = [line for line in md.splitlines() if "| SPPaRA" in line]
    assert len(sppara) == 3 and "59.50 ± 0.71 (2) [+0.50]" in sppara[2] and "89.50 ± 0.71 (2) [+0.50]" in sppara[2]
    # the comparison with the paper covers the paper's datasets only
    vs = pd.read_csv(paths["vs_csv"])
    assert set(vs["dataset"]) == {"cifar10", "flowers102", "cats_vs_dogs"}
    assert vs[(vs.learning == "sppara") & (vs.density == 0.1)]["top1"].sort_values().tolist() == [79.5, 89.5, 90.5]
    claims = paths["claims"].read_text()
    assert "CIFAR-100" not in claims and re.search(r"30 % density\s*\|\s*-2\.00\s*\|\s*-1\.60\s*\|", claims)


def test_a_table1_experiment_has_one_writer_per_table_file(tmp_path, monkeypatch):
    """The per-run report of ``report: table1`` (issue 13, item 6) writes Table 1 exactly as scripts/table1.py
    does, and neither script writes tables/<exp>.{csv,md} of an experiment the other owns."""
    results = tmp_path / "results"
    tables, exp_dir = results / "tables", results / "runs" / "table1_iclr"
    experiment_report(iclr_tree(exp_dir, pruned=False), results, "table1_iclr")    # early: unpruned runs only
    assert (tables / "table1_iclr.md").read_text().startswith("Table 1 (partial: 0 of 12 cells")
    outputs = experiment_report(iclr_tree(exp_dir, pruned=True), results, "table1_iclr")   # as pipeline.run does
    assert outputs["table"] == tables / "table1_iclr.md"
    reported = {p.name: p.read_bytes() for p in tables.iterdir()}
    assert pd.read_csv(tables / "table1_iclr.csv").columns[:3].tolist() == ["pruning", "learning", "density"]
    monkeypatch.setattr(sys, "argv", ["table1.py", "table1_iclr", "--results-dir", str(results)])
    assert load_script("table1").main() == 0
    assert {p.name: p.read_bytes() for p in tables.iterdir()} == reported           # same files, same bytes
    assert {"table1_iclr_runs.csv", "table1_iclr_steps.csv", "table1_iclr.tex"} <= set(reported)
    # the pipeline passes its config's report setting: the same layout under any experiment name
    experiment_report(exp_dir, results, "renamed", report="table1")
    assert (tables / "renamed.csv").read_bytes() == reported["table1_iclr.csv"]
    # report: true (demo): the generic summary owns demo.{csv,md}; scripts/table1.py leaves them alone
    demo = experiment_report(exp_dir, results, "demo")["table"]
    assert demo.read_text().startswith("torch 2.14.1\n\n| data ")
    assert pd.read_csv(tables / "demo.csv").columns[:3].tolist() == ["dataset", "backbone", "adapter"]
    before = demo.read_bytes()
    monkeypatch.setattr(sys, "argv", ["table1.py", "demo", "--results-dir", str(results)])
    assert load_script("table1").main() == 2 and demo.read_bytes() == before
    # report: false (table1_mini): its Table 1 comes from scripts/table1.py, scripts/report.py refuses
    monkeypatch.setattr(sys, "argv", ["report.py", "table1_mini", "--results-dir", str(results)])
    assert load_script("report").main() == 2 and not (tables / "table1_mini.csv").exists()


def test_tables_state_the_torch_versions_of_their_runs(tmp_path):
    """Every table the reporting writes names the torch version(s) of the runs behind it: in Markdown
    above the table, in LaTeX as a comment, for CSV in the sidecar <exp>_versions.json."""
    two = lambda dataset, adapter, pruning, seed: "2.13.0" if seed == 2 else "2.14.1"  # noqa: E731
    root = run_tree(tmp_path / "runs", torch=two)
    paths = table1_report(root, tmp_path / "tables", "mixed")
    both = "torch 2.13.0, 2.14.1"
    assert f"\n\n{both}\n\n|" in paths["md"].read_text() and paths["tex"].read_text().startswith(f"% {both}\n")
    assert paths["vs_md"].read_text().startswith(f"{both}\n\n|") and paths["claims"].read_text().startswith(both)
    runs = len(RUNS)                         # helpers' runs record no machine (as runs made before it was kept)
    assert json.loads(paths["versions"].read_text()) == {"torch": ["2.13.0", "2.14.1"], "machines": [],
                                                         "runs_without_machine_record": runs}
    assert pd.read_csv(paths["csv"]).columns[0] == "pruning"                           # the CSV stays plain
    table = experiment_report(root, tmp_path, "mixed_generic", report=True)["table"]
    assert table.read_text().startswith(f"{both}\n\n| data ")
    sidecar = json.loads((tmp_path / "tables" / "mixed_generic_versions.json").read_text())
    assert sidecar == {"torch": ["2.13.0", "2.14.1"], "machines": [], "runs_without_machine_record": runs}


def test_versions_sidecars_name_the_machines_and_kernel_sets_of_their_runs(tmp_path):
    """Two runs on one AVX-512 machine, one with oneDNN capped at AVX2: two machines, counted."""
    from spa.reporting.collect import run_machines, write_versions
    root = run_tree(tmp_path / "runs")
    summaries = sorted(root.rglob("summary.json"))
    machine = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "onednn_max_cpu_isa": None, "mkl_cbwr": None,
               "threads": 2}
    for path, isa in zip(summaries[:3], [None, None, "AVX2"]):
        summary = json.loads(path.read_text())
        summary["versions"].update(machine, onednn_max_cpu_isa=isa)
        path.write_text(json.dumps(summary))
    found = run_machines(root)
    assert found == {"machines": [{**machine, "runs": 2}, {**machine, "onednn_max_cpu_isa": "AVX2", "runs": 1}],
                     "runs_without_machine_record": len(summaries) - 3}
    written = json.loads(write_versions(tmp_path / "x_versions.json", ["2.14.1"], found).read_text())
    assert written == {"torch": ["2.14.1"], **found}


def test_collapsed_cells_are_marked_and_claims_over_them_are_not_evidence(tmp_path):
    from spa.metrics.collapse import MARK
    steps = collect_steps(run_tree(tmp_path / "runs"))
    assert "collapsed" not in steps                     # runs recorded before the flag: nothing marked
    assert MARK not in write_table1(steps, load_table1(), tmp_path / "old")["md"].read_text()
    # fine-pruning by Taylor at 30 % collapsed in one seed: its cell, and the r8 claim at 30 % that uses it
    steps["collapsed"] = False
    hit = (steps["adapter"] == "finetune") & (steps["pruning"] == "taylor") & (steps["density"].round(2) == 0.3) \
        & (steps["seed"] == 1)
    assert hit.sum() == 1
    steps.loc[hit, "collapsed"] = True
    paths = write_table1(steps, load_table1(), tmp_path / "tables")
    md = paths["md"].read_text()
    assert "95.50 ± 0.71 (2) " + MARK in md and md.count(MARK) == 2 and f"{MARK}: collapsed" in md  # cell + legend
    assert pd.read_csv(paths["csv"])["cifar10_collapsed"].tolist() == [False, False, True, False, False, False]
    claims = paths["claims"].read_text()
    assert "not evidence: collapsed CIFAR-10 Taylor" in claims and "| yes" not in claims.split("30 % density")[1]
    vs = pd.read_csv(paths["vs_csv"]).dropna(subset=["top1"])
    assert vs[vs["collapsed"] == True][["learning", "density"]].values.tolist() == [["finetune", 0.3]]  # noqa: E712
    curve = pd.read_csv(paths["curves"])
    assert curve[curve["collapsed"]][["learning", "density"]].values.tolist() == [["finetune", 0.3]]


def test_a_paper_rule_row_is_shown_beside_its_criterion_and_stays_out_of_the_claims(tmp_path):
    """A grid whose criteria use the rule its budget study chose keeps one fine-pruning run per criterion under
    the paper's rule (pruning ``<criterion>_paper_rule``): a row of its own, labelled, outside the claims even
    where it collapsed."""
    from spa.metrics.collapse import MARK
    steps = collect_steps(run_tree(tmp_path / "runs"))
    steps["collapsed"] = False
    rule = steps[(steps["adapter"] == "finetune") & (steps["pruning"] == "taylor") & (steps["seed"] == 1)].copy()
    rule["pruning"] = "taylor_paper_rule"
    rule.loc[rule["density"] < 0.9, ["top1", "collapsed"]] = [10.0, True]
    clean = write_table1(steps, load_table1(), tmp_path / "clean")
    paths = write_table1(pd.concat([steps, rule], ignore_index=True), load_table1(), tmp_path / "tables")
    md = paths["md"].read_text()
    assert "Taylor (paper's rule)" in md and "10.00 (1) " + MARK in md
    # its one seed is by design: the table's status (final / partial) counts the grid's cells only
    assert md.splitlines()[0] == clean["md"].read_text().splitlines()[0]
    rows = md.splitlines()
    assert [i for i, r in enumerate(rows) if "Taylor (paper's rule)" in r] > [i for i, r in enumerate(rows)
                                                                               if "| Taylor " in r]
    assert paths["claims"].read_text() == clean["claims"].read_text()     # same claims, still evidence
    curves = pd.read_csv(paths["curves"])
    assert set(curves["pruning"]) == {"taylor", "taylor_paper_rule"}


def test_a_summary_table_names_the_pruning_budget_of_its_runs(tmp_path):
    """``report: true`` tables (the demo's) say which pruning budget made them: one line per distinct setting
    of the pruned runs' configs (criterion, normalisation, guard, steps, recovery, scoring); none without."""
    results = tmp_path / "results"
    exp_dir = iclr_tree(results / "runs" / "demo")
    md = experiment_report(exp_dir, results, "demo")["table"]
    assert md.read_text().startswith("torch 2.14.1\n\n| data ")          # no run config: no budget line
    pruned = sorted(p.parent for p in exp_dir.rglob("summary.json") if "/taylor/" in str(p))
    assert len(pruned) >= 2
    budget = {"step_fraction": 0.175, "target_density": 0.3, "recovery_epochs": 1, "score_batches": 10}
    for i, run in enumerate(pruned):
        guard = 0.95 if i == 0 else None
        (run / "config.yaml").write_text(yaml.safe_dump({
            "pruning": {"name": "taylor", "criterion": "taylor", "normalization": None, "max_group_pruning": guard,
                        "ignore": ["conv_stem"] if i == 0 else []},
            "schedule": budget}))
    lines = [line for line in experiment_report(exp_dir, results, "demo")["table"].read_text().splitlines()
             if line.startswith("Budget")]
    assert lines == [
        "Budget (taylor): steps of 17.5% of the filters down to 30% density, 1 recovery epoch(s) per step, scores "
        "from 10 batches, normalisation l2, guard max_group_pruning=0.95, ignore ['conv_stem'].",
        "Budget (taylor): steps of 17.5% of the filters down to 30% density, 1 recovery epoch(s) per step, scores "
        "from 10 batches, normalisation l2, no guard (a layer keeps one channel)."]
