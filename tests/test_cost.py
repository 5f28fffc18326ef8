"""The sweep's epochs are counted exactly from the configs; hours follow from epoch times, measured
in runs (with the MACs ratio of pruned epochs) or stated."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spa.reporting.cost import measured_epochs, sweep_cost, sweep_epochs


def totals(epochs: pd.DataFrame) -> dict[tuple[str, str], float]:
    return epochs.groupby(["dataset", "phase"])["epochs"].sum().to_dict()


def test_table1_epochs_follow_the_papers_schedule():
    got = totals(sweep_epochs("table1"))
    # 3 seeds x (fine-tuning 20 + SPLoRA-r32 30 + SPLoRA-r8 30) initial epochs on CIFAR-10 (docs/method.md §3)
    assert got[("cifar10", "initial")] == 3 * (20 + 30 + 30)
    # 19 steps x 20 recovery epochs x 4 criteria x 3 learners x 3 seeds
    assert got[("cifar10", "recover")] == 19 * 20 * 4 * 3 * 3
    # one full scoring epoch per step for the three criteria that read data (weight does not)
    assert got[("cifar10", "score")] == 19 * 3 * 3 * 3
    assert got[("flowers102", "initial")] == 9 * 100 and got[("cats_vs_dogs", "recover")] == 19 * 50 * 36
    # one fine-pruning run on CIFAR-10 with a data criterion is "about 450 epochs" (docs/method.md §3):
    # 20 + 19 x (1 + 20)
    assert 20 + got[("cifar10", "recover")] / 36 + got[("cifar10", "score")] / 27 == 419


def test_mini_epochs_include_its_base_stage_and_batch_sized_scoring():
    got = totals(sweep_epochs("table1_mini", train_images={"cats_vs_dogs": 2000}))
    assert got[("cifar10_subset", "base")] == 20
    assert got[("cats_vs_dogs", "initial")] == 3 * 2 * 3          # 3 epochs x 2 seeds x 3 learners
    assert got[("cats_vs_dogs", "recover")] == 9 * 1 * 2 * 2 * 3  # 9 steps, 1 epoch, 2 criteria
    # Taylor reads 10 batches of 64 of the 2,000 images per step; weight reads none
    assert got[("cats_vs_dogs", "score")] == pytest.approx(9 * 2 * 3 * 10 / (2000 / 64))


def write_run(root: Path, pruning: str, epoch_times: list[float], macs: list[float], train: int = 500) -> None:
    run = root / pruning / "seed_1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"dataset": "toy", "pruning": pruning, "data": {"train": train}}))
    (run / "epochs.jsonl").write_text("".join(json.dumps({"phase": "train", "time_s": t}) + "\n" for t in epoch_times))
    pd.DataFrame({"density": [1.0, 0.5, 0.1][:len(macs)], "macs": macs}).to_csv(run / "steps.csv", index=False)


def test_hours_come_from_measured_epochs_and_the_macs_ratio_of_each_density(tmp_path):
    write_run(tmp_path, "none", [10.0, 12.0, 30.0], [100.0])
    write_run(tmp_path, "taylor", [], [100.0, 40.0, 10.0])
    epoch_s, ratios, sizes = measured_epochs(tmp_path)
    assert epoch_s == {"toy": 12.0} and sizes == {"toy": 500}
    epochs = pd.DataFrame([{"dataset": "toy", "phase": "initial", "density": 1.0, "epochs": 300.0},
                           {"dataset": "toy", "phase": "recover", "density": 0.5, "epochs": 300.0},
                           {"dataset": "toy", "phase": "recover", "density": 0.12, "epochs": 300.0}])
    cost = sweep_cost(epochs, epoch_s, ratios).set_index("phase")
    assert cost.loc["initial", "hours"] == cost.loc["initial", "hours_macs"] == pytest.approx(1.0)
    assert cost.loc["recover", "hours"] == pytest.approx(2.0)                 # upper bound: full cost
    assert cost.loc["recover", "hours_macs"] == pytest.approx(0.4 + 0.1)      # x 0.4 at 50 %, x 0.1 near 10 %
    # stated times, no ratios: only the upper bound
    stated = sweep_cost(epochs, {"toy": 12.0})
    assert stated["hours"].sum() == pytest.approx(3.0) and "hours_macs" not in stated
    with pytest.raises(ValueError, match="--epoch-seconds toy=SECONDS"):
        sweep_cost(epochs, {})
