"""Structured pruning: dependency groups, importance criteria (one class each), the iterative
schedule and a replayable pruning session.

``pruning.name`` picks a method: ``none`` (train and evaluate only) or a criterion of
:data:`spa.pruning.importance.CRITERIA`. Adapter-level pruning (Pear) or block pruning (SPLoPA)
registers one more criterion / session kind here rather than changing the pipeline.
"""
from __future__ import annotations

from spa.pruning import lrp  # noqa: F401  (registers the lrp criterion)
from spa.pruning.importance import CRITERIA


def check_pruning(name: str) -> None:
    """Fail early, with the list of what exists, on a method this version cannot run."""
    if name != "none" and name not in CRITERIA:
        raise ValueError(f"pruning={name!r} is not available; available: {['none', *sorted(CRITERIA)]}")
