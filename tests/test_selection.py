"""Hyperparameter selection on a validation split (scripts/select_lr.py), the learning rates the
ImageNet mini experiment and the demo use, and the CI check that the demo table is the committed one."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scripts_path import load_script

from spa import config_dir, repo_root
from spa.reporting.selection import selected, selection_table, write_selection


def summary(dataset, adapter, seed, val, test, run):
    return {"exp_name": "sel", "dataset": dataset, "backbone": "b", "adapter": adapter, "pruning": "none",
            "seed": seed, "epochs": 4, "wall_time_s": 1.0, "device": "cpu", "config_hash": "x", "run_dir": str(run),
            "weights": {"source": "packaged"}, "data": {"num_classes": 2},
            "metrics": {"density": 1.0, "test_top1": test, "test_top5": 100.0, "val_top1": val},
            "params": {"total": 1, "trainable": 1}}


def tree(root: Path, rows) -> Path:
    for dataset, adapter, lr, seed, val, test in rows:
        run = root / dataset / "b" / "none" / adapter / f"lr_{lr}" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(summary(dataset, adapter, seed, val, test, run)))
        (run / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr}}))
    return root


def test_the_best_validation_accuracy_selects_and_the_test_split_plays_no_part(tmp_path):
    rows = [("cats", "finetune", 0.01, 1, 90.0, 50.0), ("cats", "finetune", 0.04, 1, 80.0, 99.0),   # test ignored
            ("cats", "splora_r8", 0.01, 1, 70.0, 0.0), ("cats", "splora_r8", 0.04, 1, 70.0, 0.0),   # tie: smaller
            ("cifar", "finetune", 0.01, 1, 60.0, 0.0), ("cifar", "finetune", 0.04, 1, 64.0, 0.0),
            ("cifar", "finetune", 0.04, 2, 58.0, 0.0)]                                              # mean 61 > 60
    table = selection_table(tree(tmp_path / "runs", rows))
    assert selected(table) == {"cats": {"finetune": 0.01, "splora_r8": 0.01}, "cifar": {"finetune": 0.04}}
    assert table.loc[(table["dataset"] == "cifar") & (table["optim.lr"] == 0.04), "val_top1"].item() == 61.0
    paths = write_selection(table, tmp_path / "tables", "sel")
    text = paths["md"].read_text()
    assert "| cats   | Fine-tuning | 90.00           | 80.00           | 0.01       |" in text
    assert "test split is not read" in text


def test_runs_without_a_validation_split_are_refused(tmp_path):
    root = tree(tmp_path / "runs", [("cats", "finetune", 0.01, 1, None, 50.0)])
    with pytest.raises(ValueError, match="val_fraction"):
        selection_table(root)


def test_the_experiments_use_the_committed_selection():
    """configs/experiment/table1_imagenet_mini.yaml and demo.yaml hold the learning rates that
    results/tables/table1_imagenet_mini_lr.csv selected (the demo: CIFAR-10's, at the same 64 px)."""
    table = pd.read_csv(repo_root() / "results" / "tables" / "table1_imagenet_mini_lr.csv")
    chosen = selected(table)
    mini = yaml.safe_load((config_dir() / "experiment" / "table1_imagenet_mini.yaml").read_text())["imagenet_mini"]
    assert {d: mini[d]["lr"] for d in mini} == chosen
    demo = yaml.safe_load((config_dir() / "experiment" / "demo.yaml").read_text())
    assert demo["demo_lr"] == {a: chosen["cifar10"][a] for a in demo["demo_lr"]}
    assert demo["dataset"]["image_size"] == mini["cifar10"]["image_size"]


def test_the_demo_check_fails_on_a_table_that_differs_from_the_committed_one(tmp_path):
    check = load_script("check_demo")
    committed = tmp_path / "committed.csv"
    pd.DataFrame({"adapter": ["finetune"], "test_top1": ["61.5730"], "wall_time_s": ["79.5500"]}).to_csv(
        committed, index=False
    )
    same = tmp_path / "same.csv"
    pd.DataFrame({"adapter": ["finetune"], "test_top1": ["61.5730"], "wall_time_s": ["12.0000"]}).to_csv(
        same, index=False
    )
    moved = tmp_path / "moved.csv"
    pd.DataFrame({"adapter": ["finetune"], "test_top1": ["49.2100"], "wall_time_s": ["79.5500"]}).to_csv(
        moved, index=False
    )
    assert check.table_differences(same, committed) == []  # the time is not compared
    diffs = check.table_differences(moved, committed)
    assert len(diffs) == 1 and "49.2100" in diffs[0] and "61.5730" in diffs[0]


def test_the_demo_check_compares_exactly_on_the_committed_machine_and_within_tolerance_elsewhere(tmp_path):
    """Float32 training turns kernel-set rounding into other numbers (issue 32): the same machine and
    kernels must reproduce the table exactly, another one within the tolerance and in its structure."""
    check = load_script("check_demo")
    cols = {"adapter": ["finetune", "finetune"], "pruning": ["none", "taylor"], "density": [1.0, 0.3],
            "test_top1": [72.93, 61.58], "test_top5": [98.35, 96.10], "params_trainable": [3383818, 571110],
            "params_total": [3383818, 571110], "wall_time_s": [73.0, 90.0]}
    committed = tmp_path / "committed.csv"
    pd.DataFrame(cols).to_csv(committed, index=False)
    elsewhere = tmp_path / "elsewhere.csv"      # another kernel set: 1.2 points off, pruning kept other channels
    pd.DataFrame({**cols, "test_top1": [71.75, 63.59], "params_trainable": [3383818, 578408],
                  "params_total": [3383818, 578408]}).to_csv(elsewhere, index=False)
    assert check.close_differences(elsewhere, committed, 6.0) == []
    assert check.table_differences(elsewhere, committed)                    # not equal, so not on the same machine
    far = check.close_differences(elsewhere, committed, 1.5)
    assert len(far) == 1 and "63.59" in far[0]
    broken = tmp_path / "broken.csv"            # an unpruned count or a density that moved is never noise
    pd.DataFrame({**cols, "params_trainable": [3383000, 571110], "density": [1.0, 0.35]}).to_csv(broken, index=False)
    assert len(check.close_differences(broken, committed, 6.0)) == 2
    (tmp_path / "demo_versions.json").write_text(json.dumps({"torch": ["2.14.1"], "machines": [
        {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "onednn_max_cpu_isa": None, "threads": 2, "runs": 4}]}))
    assert check.machines(tmp_path) == [{"cpu": "AMD EPYC", "cpu_capability": "AVX512", "onednn_max_cpu_isa": None,
                                         "threads": 2}]
    assert check.machines(tmp_path / "nowhere") == []


def test_the_demo_check_is_exact_on_one_cpu_or_on_the_portable_kernels_of_any():
    check = load_script("check_demo")
    native = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "onednn_max_cpu_isa": None, "mkl_cbwr": None,
              "threads": 2}
    portable = {**native, "cpu_capability": "DEFAULT", "onednn_max_cpu_isa": "SSE41", "mkl_cbwr": "COMPATIBLE"}
    intel = {"cpu": "Intel Xeon"}
    assert check.same_kernels([native], [native])
    assert not check.same_kernels([{**native, **intel}], [native])                   # another CPU's own kernels
    assert check.same_kernels([{**portable, **intel}], [portable])                   # portable: any x86 CPU
    assert not check.same_kernels([{**portable, "threads": 4}], [portable])          # reductions split by threads
    assert not check.same_kernels([portable], [native]) and not check.same_kernels([], [native])


def _summary(adapter: str, pruning: str, top1: float, majority: float | None = 11.8) -> dict:
    return {"dataset": "cifar10", "adapter": adapter, "pruning": pruning, "seed": 1, "weights": {"source": "packaged"},
            "metrics": {"test_top1": top1, "test_top5": 99.0, "density": 1.0 if pruning == "none" else 0.3},
            "data": {"num_classes": 10, "test": 846, **({"majority": majority} if majority is not None else {})}}


def test_the_demo_check_fails_on_a_collapsed_run_pruned_or_not(capsys):
    """846 test images, majority share 11.8 %: the margin is 3.3 points (3 SE), so 15.0 is a collapse."""
    check = load_script("check_demo")
    healthy = [_summary("finetune", "none", 73.6), _summary("finetune", "taylor", 60.8)]
    assert check.transfer_ok(healthy, 2.0)
    assert not check.transfer_ok([healthy[0], _summary("finetune", "taylor", 15.0)], 2.0)
    assert "COLLAPSED" in capsys.readouterr().err
    assert check.transfer_ok([healthy[0], _summary("finetune", "taylor", 15.0, majority=None)], 2.0)  # not recorded


def test_the_generic_table_marks_a_collapsed_cell_and_says_what_the_mark_means():
    from spa.metrics.collapse import MARK
    from spa.reporting.collect import _row
    from spa.reporting.report import markdown_table, summarise
    base = {"exp_name": "demo", "backbone": "b", "epochs": 3, "wall_time_s": 1.0, "device": "cpu", "config_hash": "h",
            "run_dir": "r", "params": {"total": 10, "trainable": 10}}
    runs = pd.DataFrame([_row({**base, **_summary("finetune", "none", 73.6)}),
                         _row({**base, **_summary("splora_r8", "taylor", 12.0)})])
    assert runs["collapsed"].tolist() == [False, True]
    text = markdown_table(summarise(runs))
    assert f"12.00 {MARK}" in text and "73.60 " + MARK not in text and f"{MARK}: collapsed" in text
    assert MARK not in markdown_table(summarise(runs.iloc[[0]]))
