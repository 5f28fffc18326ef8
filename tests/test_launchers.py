"""Scale-out: a sweep through submitit's local executor (parallel processes, the SLURM launcher's
machinery) ends with the records of the sequential launcher; two processes racing for one shared
stage train it once; the SLURM job settings can be shown without a cluster; a GPU slot is held by
one process at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import cli

from spa import repo_root
from spa.utils import claim_gpu_slot

GRID = ["pruning=weight,taylor", "adapter=finetune,splora_r8", "schedule.step_fraction=0.3",
        "schedule.target_density=0.4", "schedule.recovery_epochs=1"]


def run_records(results: Path, exp: str) -> dict[str, dict]:
    """Per run: steps.csv without timings, and the summary's metrics and parameter counts."""
    out = {}
    for summary in sorted((results / "runs" / exp).rglob("summary.json")):
        run = summary.parent
        data = json.loads(summary.read_text())
        steps = pd.read_csv(run / "steps.csv").drop(columns="time_s") if (run / "steps.csv").is_file() else None
        out[str(run.relative_to(results / "runs" / exp))] = {
            "metrics": data["metrics"], "params": data["params"], "config_hash": data["config_hash"],
            "steps": steps}
    return out


@pytest.mark.slow     # subprocesses: minutes of the fast suite (make test-all runs it)
def test_a_parallel_sweep_through_submitit_matches_the_sequential_one(tmp_path, image_folder):
    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    args, env = cli(sequential, image_folder, "grid", "1")
    out = subprocess.run(args + GRID, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    args, env = cli(parallel, image_folder, "grid", "1")
    out = subprocess.run(args + GRID + ["launcher=submitit_local"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = list((parallel / "runs" / "grid" / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 4                                  # one submitit job (a process) per pruned run
    ours, reference = run_records(parallel, "grid"), run_records(sequential, "grid")
    assert len(reference) == 6 and sorted(ours) == sorted(reference)   # 4 pruned + the 2 shared unpruned runs
    for run, ref in reference.items():
        assert ours[run]["metrics"] == ref["metrics"] and ours[run]["config_hash"] == ref["config_hash"], run
        assert ours[run]["params"] == ref["params"] and ref["params"]["trainable"] > 0, run
        if ref["steps"] is not None:
            pd.testing.assert_frame_equal(ours[run]["steps"], ref["steps"], obj=run)


RACER = textwrap.dedent("""
    import json, os, runpy, sys, time
    import spa.pipeline.parts as parts
    log, argv = sys.argv[1], sys.argv[2:]
    real_fit = parts.fit

    def fit(*args, **kwargs):          # record every training call; a slow one, to race in
        start = time.time()
        time.sleep(2 if kwargs.get("phase") == "train" else 0)
        result = real_fit(*args, **kwargs)
        with open(log, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "phase": kwargs.get("phase"), "start": start,
                                     "end": time.time()}) + "\\n")
        return result

    parts.fit = fit                     # what Parts.train calls
    with open(log, "a") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "phase": "ready", "start": time.time()}) + "\\n")
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
""")


@pytest.mark.slow     # subprocesses: minutes of the fast suite (make test-all runs it)
def test_two_processes_racing_for_a_shared_stage_train_it_once(tmp_path, image_folder):
    """Two pruned runs (two criteria) of the same (data, learner, seed) start together: the
    unpruned run they share is trained by one of them while the other waits on its lock."""
    log = tmp_path / "calls.jsonl"
    procs = []
    for criterion in ("weight", "taylor"):
        args, env = cli(tmp_path / "results", image_folder, "race", "1")
        argv = [a for a in args if a != "-m"] + [f"pruning={criterion}", *GRID[2:]]
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, str(log), *argv[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ready = [c for c in calls if c["phase"] == "ready"]
    trained = [c for c in calls if c["phase"] == "train"]
    assert len(ready) == 2 and len(trained) == 1              # the shared stage was trained once
    assert max(r["start"] for r in ready) < trained[0]["end"]  # ... while both processes were up
    waiter = next(out for out, p in zip(outputs, procs) if p.pid != trained[0]["pid"])
    assert "skipping" in waiter and "none/finetune/seed_1" in waiter
    assert len([c for c in calls if c["phase"] == "recover"]) == 2 * 2     # two steps per pruned run
    unpruned = tmp_path / "results/runs/race/image_folder/test_resnet/none/finetune/seed_1"
    assert len((unpruned / "epochs.jsonl").read_text().splitlines()) == 1    # train.epochs=1, not twice


@pytest.mark.parametrize("launcher,target,expected", [
    ("slurm", "SlurmLauncher", ["partition: gpu", "gpus_per_node: 1", "max_num_timeout: 5", "array_parallelism: 64",
                                "submitit_folder: ${hydra.sweep.dir}/.submitit/%j"]),
    ("gpus", "JoblibLauncher", ["n_jobs: ${spa_cuda_count:}", "backend: loky"]),
    ("local", "BasicLauncher", []),
])
def test_launcher_settings_can_be_shown_without_launching(tmp_path, launcher, target, expected):
    """The README's dry run: the job settings a cluster would receive, and nothing run or submitted."""
    args = [sys.executable, str(repo_root() / "scripts" / "run.py"), "experiment=table1", f"launcher={launcher}",
            "hydra.launcher.partition=gpu" if launcher == "slurm" else "seed=1", "--cfg", "hydra",
            "--package", "hydra.launcher"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SPA_RESULTS_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert target in out.stdout and all(e in out.stdout for e in expected), out.stdout
    assert not (tmp_path / "runs").exists()                # nothing was run or submitted


@pytest.mark.slow     # subprocesses: minutes of the fast suite (make test-all runs it)
def test_a_gpu_slot_is_held_by_one_process_at_a_time(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from spa.utils import claim_gpu_slot
        print(claim_gpu_slot(count=2, lock_dir={str(tmp_path)!r}), flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        first = int(holder.stdout.readline())
        second = subprocess.run([sys.executable, "-c", "from spa.utils import claim_gpu_slot; "
                                 f"print(claim_gpu_slot(count=2, lock_dir={str(tmp_path)!r}))"],
                                capture_output=True, text=True, timeout=60)
        assert (first, int(second.stdout)) == (0, 1)          # the free one, not the held one
        start = time.time()
        waiting = subprocess.Popen([sys.executable, "-c", "from spa.utils import claim_gpu_slot; "
                                    f"print(claim_gpu_slot(count=1, lock_dir={str(tmp_path)!r}, wait_s=0.2))"],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(8)                                          # GPU 0 is held: the claim waits for it
        assert waiting.poll() is None
        holder.kill()                                          # the holder's end frees its GPU
        assert int(waiting.communicate(timeout=60)[0]) == 0 and time.time() - start < 30
    finally:
        holder.kill()
    with pytest.raises(RuntimeError, match="launcher=local"):
        claim_gpu_slot(count=0, lock_dir=tmp_path)


@pytest.mark.slow     # subprocesses: minutes of the fast suite (make test-all runs it)
def test_the_gpus_launcher_runs_jobs_in_parallel_workers_and_needs_gpus(tmp_path, image_folder):
    args, env = cli(tmp_path, image_folder, "pool", "1,2")
    # on a CPU machine the worker pool itself can still be exercised with device=cpu
    out = subprocess.run(args + ["launcher=gpus", "device=cpu", "hydra.launcher.n_jobs=2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr
    assert len(list((tmp_path / "runs" / "pool").rglob("summary.json"))) == 2
    bad = subprocess.run([a for a in args if a != "device=cpu"] + ["launcher=gpus", "exp_name=nogpu"],
                         env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "launcher=local" in bad.stdout + bad.stderr
