"""The regression harness (scripts/regression.py): the tiny fixed sweep reproduces its golden values
(tests/regression_golden.json), and the comparison catches what a behaviour change moves."""
from __future__ import annotations

import copy
import json

from scripts_path import load_script

regression = load_script("regression")


def test_the_fixed_sweep_reproduces_its_golden_values(tmp_path):
    """Fails when a change moves the pipeline's numbers; if meant, `make golden` and commit the file."""
    moved = regression.differences(regression.sweep(tmp_path), json.loads(regression.GOLDEN.read_text()))
    assert moved == [], "\n".join(moved)


def test_the_comparison_catches_counts_widths_and_losses_but_not_kernel_noise():
    golden = json.loads(regression.GOLDEN.read_text())
    run = "test_resnet/taylor/splora_r8"
    assert len(golden) == 8 and len(golden[run]["steps"]) == 3
    noise = copy.deepcopy(golden)
    noise[run]["steps"][2]["test_loss"] *= 1 + 1e-5                    # kernel-set noise: passes
    noise[run]["steps"][1]["top1"] += 100 / 16                         # one borderline image flipped: passes
    assert regression.differences(noise, golden) == []
    for change in ({"params_learned": 1}, {"kept_filters": -4}, {"test_loss": 0.02}, {"top1": 12.5}):
        moved = copy.deepcopy(golden)
        key, delta = next(iter(change.items()))
        moved[run]["steps"][2][key] += delta * (moved[run]["steps"][2][key] if key == "test_loss" else 1)
        assert len(regression.differences(moved, golden)) == 1, change
    narrower = copy.deepcopy(golden)
    layer = next(iter(narrower[run]["widths"]))
    narrower[run]["widths"][layer][0] -= 1
    assert "layer widths moved" in regression.differences(narrower, golden)[0]
