"""When is a result a collapse rather than a result? A test top-1 at the level a constant prediction
reaches: within max(3 points, 3 binomial standard errors) of the majority class's share of the test
set, or below it. Such a number says the network broke (a layer emptied, a budget too small), not how
one method compares with another, so steps.csv flags it (``collapsed``) and every table marks it."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

POINTS = 3.0          # the least margin, in top-1 points
STANDARD_ERRORS = 3.0


@dataclass(frozen=True)
class Chance:
    """The majority class's share of a test set (%, what always predicting it scores) and its size."""
    majority: float
    images: int

    @classmethod
    def of(cls, labels: Iterable[int]) -> Chance:
        counts = Counter(int(label) for label in labels)
        images = sum(counts.values())
        return cls(100.0 * max(counts.values()) / images if images else 0.0, images)

    @property
    def margin(self) -> float:
        """max(3 points, 3 binomial standard errors of a top-1 at the majority share on this many images)."""
        p = self.majority / 100.0
        se = 100.0 * math.sqrt(p * (1.0 - p) / self.images) if self.images else 0.0
        return max(POINTS, STANDARD_ERRORS * se)

    def collapsed(self, top1: float | None) -> bool | None:
        """Whether ``top1`` (%) is within the margin of the majority share or below it (None: no top-1)."""
        if top1 is None or (isinstance(top1, float) and math.isnan(top1)):
            return None
        return bool(top1 <= self.majority + self.margin)


MARK = "†"
LEGEND = (f"{MARK}: collapsed, at least one seed's test top-1 within max({POINTS:g} points, "
          f"{STANDARD_ERRORS:g} binomial standard errors) of the test set's majority-class share, or below it: "
          "the network broke at this budget; the cell says nothing about the method")
