"""The headline claims follow from the paper's Table 1 as docs/method.md §4 says."""
from __future__ import annotations

import pytest

from spa.reporting.paper import PAPER_TABLE1, headline_claims, load_table1


def test_paper_table_loads_in_long_form():
    table = load_table1()
    assert PAPER_TABLE1.is_file()
    assert len(table) == 27 * 3 and set(table["dataset"]) == {"cifar10", "flowers102", "cats_vs_dogs"}
    cell = table[(table.pruning == "taylor") & (table.learning == "splora_r8") & (table.density == 0.10)
                 & (table.dataset == "flowers102")]
    assert cell[["top1", "top1_std", "params_k"]].values.tolist() == [[86.76, 0.42, 128.4]]


def test_plus_6_91_points_with_r32_at_10_percent_density():
    claim = headline_claims(load_table1())["r32_at_10pct"]
    assert claim.per_dataset == {"cats_vs_dogs": 1.48, "cifar10": 3.23, "flowers102": 16.03}
    assert claim.mean == pytest.approx(6.91)


def test_minus_1_60_points_with_r8_at_30_percent_density():
    claim = headline_claims(load_table1())["r8_at_30pct"]
    assert claim.per_dataset == {"cats_vs_dogs": -0.37, "cifar10": -2.02, "flowers102": -2.41}
    assert claim.mean == pytest.approx(-1.60)
    assert claim.params_ratio == {"gradient": 18.1, "lrp": 21.8, "taylor": 16.5, "weight": 21.1}
    assert min(claim.params_ratio.values()) == 16.5 and max(claim.params_ratio.values()) == 21.8
