"""The comparison helpers of tests/numerics.py: exact operations only in float64 and tight, float32
comparisons relative to the output's magnitude (issue 32)."""
from __future__ import annotations

import pytest
import torch
from numerics import EXACT, assert_close_rel, assert_exact, max_rel_err


def test_exact_comparisons_refuse_float32_and_catch_a_difference_far_below_float32_rounding():
    a = torch.linspace(-50, 50, 101, dtype=torch.float64)
    assert_exact(a, a.clone())
    assert_exact(a * (1 + 1e-12), a)                            # float64 rounding through a deep net: passes
    with pytest.raises(AssertionError, match="relative error"):
        assert_exact(a + 50 * 1e-8, a)                           # 1e-8 of the largest value: fails
    with pytest.raises(AssertionError, match="float64"):
        assert_exact(a.float(), a.float())
    assert EXACT < torch.finfo(torch.float32).eps / 100         # tighter than any float32 result could meet


def test_relative_comparisons_scale_with_the_output():
    big = torch.tensor([100.0, -70.0])
    assert max_rel_err(big + 0.005, big) == pytest.approx(5e-5, rel=1e-3)     # float32 inputs
    assert_close_rel(big + 0.005, big, 1e-4)                     # 5e-3 on logits of 100: float32 noise
    with pytest.raises(AssertionError, match="relative error"):
        assert_close_rel(big + 0.5, big, 1e-4)
    assert max_rel_err(torch.zeros(3), torch.zeros(3)) == 0.0  # an all-zero output compares absolutely


def test_the_float64_fixture_sets_and_restores_the_default_dtype(float64):
    assert torch.randn(2).dtype == torch.float64 and torch.nn.Linear(2, 2).weight.dtype == torch.float64


def test_the_default_dtype_is_float32_outside_the_fixture():
    assert torch.get_default_dtype() == torch.float32
