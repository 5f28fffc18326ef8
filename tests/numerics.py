"""How the tests compare numbers that should agree (issue 32: a float32 tolerance that holds for one
set of CPU kernels fails on another; torch and oneDNN pick their kernels by the CPU's instruction set).

- **Exact in real arithmetic** (fuse, crop, restore, channel / block removal, head pruning, task
  switching): build or ``.double()`` the model and its input and call :func:`assert_exact`. In
  float64 these operations agree to ~1e-14 of the output's magnitude on every kernel set; the
  tolerance below is a million times looser than that and a million times tighter than any real
  difference (one wrong weight moves a logit by far more than 1e-9 of the largest one).
- **float32 by nature** (onnxruntime against PyTorch, weights stored in float32 and compared with
  the same weights recomputed, AMP): :func:`assert_close_rel` with a tolerance relative to the
  output's magnitude and the reason written beside it at the call.

Every test that uses either is marked ``numerics``: ``make test-kernels`` (and CI) runs them again
with ``ATEN_CPU_CAPABILITY=default`` (and ``avx2`` where the CPU has it), so a tolerance that holds
for one kernel set only fails wherever it runs.
"""
from __future__ import annotations

import torch

EXACT = 1e-9          # float64, relative to the largest |expected|: exact operations land at ~1e-14
FLOAT32_STORED = 1e-5  # float64 forwards of weights rounded to float32 once (fused and stored vs recomputed)


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the scale of the output, 1 where it is all zero)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
    scale = expected.detach().double().abs().max().item()
    return diff / (scale if scale > 0 else 1.0)


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, tol: float = EXACT, what: str = "") -> None:
    """An operation exact in real arithmetic, checked in float64: relative error at most ``tol``."""
    assert actual.dtype == expected.dtype == torch.float64, (
        f"compare exact operations in float64 (got {actual.dtype} / {expected.dtype}): .double() the model and input")
    err = max_rel_err(actual, expected)
    assert err <= tol, f"{what} relative error {err:.3g} > {tol:g} (largest |expected| {expected.abs().max():.4g})"


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """A comparison that is float32 by nature: relative error (to the output's magnitude) at most ``tol``.
    The caller writes beside it why the comparison cannot be made in float64."""
    err = max_rel_err(actual, expected)
    assert err <= tol, f"{what} relative error {err:.3g} > {tol:g} (largest |expected| {expected.abs().max():.4g})"
