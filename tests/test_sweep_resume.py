"""A sweep killed midway (SIGKILL, the whole process group) and launched again finishes with the
same records and the same Table 1 as a sweep that ran through: with the sequential launcher, and
with submitit's (a SLURM job killed and requeued resumes the same way: from its last step)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import cli

from spa import repo_root

GRID = ["pruning=weight,taylor", "adapter=finetune,splora_r8", "schedule.step_fraction=0.3",
        "schedule.target_density=0.4", "schedule.recovery_epochs=1"]
RUNS = 4 + 2      # 2 criteria x 2 learners, and the 2 unpruned runs they share


def sweep(results: Path, image_folder: Path) -> tuple[list[str], dict[str, str]]:
    args, env = cli(results, image_folder, "grid", "1")
    return args + GRID, env


def finished(results: Path) -> list[Path]:
    return sorted((results / "runs" / "grid").rglob("summary.json"))


def table1(results: Path) -> dict[str, pd.DataFrame]:
    out = subprocess.run([sys.executable, str(repo_root() / "scripts" / "table1.py"), "grid", "--results-dir",
                          str(results)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return {name: pd.read_csv(results / "tables" / f"grid{name}.csv") for name in ("", "_curves", "_vs_paper")}


def mid_pruning(results: Path) -> list[Path]:
    """Pruned runs that have recorded a pruning step but not finished."""
    return [p.parent for p in (results / "runs" / "grid").rglob("steps.csv")
            if len(p.read_text().splitlines()) > 2 and not (p.parent / "summary.json").is_file()]


def records(results: Path) -> dict[str, pd.DataFrame]:
    """Every run's steps.csv without its timings."""
    runs = results / "runs" / "grid"
    return {str(p.parent.relative_to(runs)): pd.read_csv(p).drop(columns="time_s") for p in runs.rglob("steps.csv")}


@pytest.mark.slow     # subprocesses: minutes of the fast suite (make test-all runs it)
@pytest.mark.parametrize("launcher", ["local", "submitit_local"])
def test_a_killed_sweep_relaunched_ends_with_the_tables_of_an_uninterrupted_one(tmp_path, image_folder, launcher):
    args, env = sweep(tmp_path / "through", image_folder)
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(finished(tmp_path / "through")) == RUNS

    killed = tmp_path / "killed"
    args, env = sweep(killed, image_folder)
    args = args + [f"launcher={launcher}"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (len(finished(killed)) >= 3 and mid_pruning(killed)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the sweep must die midway, inside a pruned run, for this test to mean anything
    assert len(finished(killed)) < RUNS and mid_pruning(killed)

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(finished(killed)) == RUNS
    ours, reference = records(killed), records(tmp_path / "through")
    assert sorted(ours) == sorted(reference)
    for run, steps in reference.items():
        pd.testing.assert_frame_equal(ours[run], steps, obj=run)
    for name, table in table1(tmp_path / "through").items():
        pd.testing.assert_frame_equal(table1(killed)[name], table, obj=f"grid{name}.csv")
