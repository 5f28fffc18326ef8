"""Structured pruning: criteria, dependency groups, schedule and loop.

``PRUNING_METHODS`` maps ``pruning.name`` to a method; ``none`` (train and evaluate only) is the
one every run supports. Criteria register here the same way adapters register in ``spa.adapters``,
so adapter-level pruning (Pear) or block pruning (SPLoPA) is one more entry.
"""
from __future__ import annotations

PRUNING_METHODS: dict[str, object] = {"none": None}


def check_pruning(name: str) -> None:
    """Fail early, with the list of what exists, on a method this version cannot run."""
    if name not in PRUNING_METHODS:
        raise ValueError(f"pruning={name!r} is not available; available: {sorted(PRUNING_METHODS)}")
