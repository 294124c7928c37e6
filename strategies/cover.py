"""Near-duplicate bookkeeping for strategies that pick one item at a time (BADGE, Cluster-Margin, TypiClust).

``Cover`` keeps, for every candidate row, its cosine distance to the nearest *center* — the reference set (labeled
and queued items) and what was picked so far — so that a pick closer than ``PoolView.min_distance`` to a center is
refused, as ``strategies.greedy`` refuses it for the ranking strategies. One matrix-vector product per pick.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.greedy import MAX_DISTANCE
from strategies.index import min_cosine_distance

__all__ = ["Cover"]


class Cover:
    """Distances of rows ``x`` (unit float32) to the reference set and the picks; inactive at ``min_distance`` 0."""

    def __init__(self, x: NDArray[np.float32], reference: NDArray[np.float32] | None, min_distance: float) -> None:
        self.x = x
        self.min_distance = min_distance
        self.active = min_distance > 0
        self.bound: NDArray[np.float32] = np.full(len(x), MAX_DISTANCE, dtype=np.float32)
        if self.active and reference is not None and len(reference):
            self.bound = np.minimum(self.bound, min_cosine_distance(x, reference)).astype(np.float32)

    def duplicates(self) -> NDArray[np.bool_]:
        """Rows that are near-duplicates of a center now."""
        if not self.active:
            return np.zeros(len(self.x), dtype=bool)
        return self.bound < self.min_distance

    def is_duplicate(self, row: int) -> bool:
        return bool(self.active and self.bound[row] < self.min_distance)

    def add(self, row: int) -> None:
        """``row`` was picked: it is a center from now on."""
        if self.active:
            np.minimum(self.bound, np.maximum(1.0 - self.x @ self.x[row], 0.0), out=self.bound)
