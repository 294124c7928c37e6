"""k-center greedy (core-set) selection: each pick is the item farthest from everything selected, queued or labeled.

Reference: O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
ICLR 2018. The exact lazy greedy it runs is ``strategies.greedy`` with weight 1; ``covering_radius`` is the
objective it minimises (greedily), for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies._validate import unit_rows
from strategies.base import PoolView, Selection, StrategyBase
from strategies.greedy import MAX_DISTANCE, greedy_rows
from strategies.index import coarse_clusters, min_cosine_distance

__all__ = ["KCenterStrategy", "covering_radius"]


@dataclass(frozen=True)
class KCenterStrategy(StrategyBase):
    """k-center greedy over all selectable items, starting from the reference set (labeled and queued items),
    so a new batch fills gaps instead of re-covering them. Ignores uncertainty (except to exclude items with
    none). Scores are each pick's distance to its nearest center; ``clusters`` a coarse grouping for Label
    Studio."""

    name: str = field(default="kcenter", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def _select(self, pool: PoolView, budget: int) -> Selection:
        x = pool.embeddings_for(self.name)
        picked = greedy_rows(
            x,
            budget,
            np.where(pool.usable, 1.0, np.nan),
            weight=1.0,
            reference=pool.reference_embeddings,
            min_distance=pool.min_distance,
        )
        return Selection(
            indices=picked.indices,
            scores=picked.distances.astype(np.float64),
            clusters=coarse_clusters(x[picked.indices], pool.seed),
            skipped=picked.skipped,
        )


def covering_radius(
    embeddings: NDArray[np.float32], centers: NDArray[np.int64], reference: NDArray[np.float32] | None = None
) -> float:
    """The largest distance from any row to its nearest center (picked rows and reference): what k-center
    minimises greedily. Rows are rescaled to unit length first, as everywhere."""
    x = unit_rows(embeddings)
    cover = x[np.asarray(centers, dtype=np.int64)]
    if reference is not None and len(reference):
        cover = np.concatenate([cover, unit_rows(reference, "reference embeddings")])
    if len(cover) == 0:
        return float(MAX_DISTANCE)
    return float(min_cosine_distance(x, cover).max(initial=0.0))
