"""Cluster-Margin: the lowest-margin candidates, clustered, then taken round-robin from the smallest cluster.

Reference: G. Citovsky, G. DeSalvo, C. Gentile, L. Karydas, A. Rajagopalan, A. Rostamizadeh, S. Kumar, "Batch
Active Learning at Scale", NeurIPS 2021 (Algorithm 1). Each round: take the ``candidates`` × budget items with the
smallest margin (the largest ``margin`` uncertainty), group them into clusters over their embeddings, sort the
clusters by size, smallest first, and visit them round-robin, taking one item from each cluster per pass until the
budget is filled. The authors cluster the whole pool once with average-linkage HAC; here the candidates are
clustered each round with FAISS k-means into ``clusters`` × budget groups (HAC is quadratic in memory and needs a
distance threshold per dataset), which keeps the algorithm's two properties: the batch comes from the uncertain
region only, and no region of it is over-represented. Within a cluster the item is drawn at random (``pick:
random``, as published) or is its most uncertain member (``pick: uncertain``).

How it differs from ``hybrid``: there every k-means cluster gives exactly one item, its most uncertain; here the
number of clusters is free (fewer than the budget: several rounds of the round-robin; more: the smallest clusters,
the rarest kinds of uncertain item, come first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection, StrategyBase
from strategies.cover import Cover
from strategies.errors import InvalidOptionError, UnknownStrategyError
from strategies.index import coarse_clusters, kmeans

__all__ = ["CLUSTER_MARGIN_PICKS", "ClusterMarginStrategy", "round_robin"]

CLUSTER_MARGIN_PICKS = ("random", "uncertain")


def round_robin(assignment: NDArray[np.int64], order_within: NDArray[np.int64]) -> NDArray[np.int64]:
    """Positions in round-robin order: clusters sorted by size (smallest first, ties to the lower cluster id), one
    member of each per pass; within a cluster, members in the order of ``order_within`` (a permutation of the
    positions). The order every Cluster-Margin batch is taken in."""
    assignment = np.asarray(assignment, dtype=np.int64)
    if len(assignment) == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(assignment)
    rank_of_position = np.empty(len(order_within), dtype=np.int64)
    rank_of_position[order_within] = np.arange(len(order_within))
    # each member's pass number = its rank among its cluster's members
    by_cluster = np.lexsort((rank_of_position, assignment))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    member_rank = np.empty(len(assignment), dtype=np.int64)
    member_rank[by_cluster] = np.arange(len(assignment)) - starts[assignment[by_cluster]]
    cluster_order = np.lexsort((np.arange(len(sizes)), sizes))  # smallest first
    cluster_rank = np.empty(len(sizes), dtype=np.int64)
    cluster_rank[cluster_order] = np.arange(len(sizes))
    return np.lexsort((cluster_rank[assignment], member_rank)).astype(np.int64)


@dataclass(frozen=True)
class ClusterMarginStrategy(StrategyBase):
    """Margin-filtered candidates, clustered, taken round-robin from the smallest cluster; see the module
    docstring. ``candidates``: how many times the budget the margin filter keeps (>= 1); ``clusters``: k-means
    clusters as a multiple of the budget (> 0); ``pick``: ``random`` (published) or ``uncertain``."""

    candidates: float = 10.0
    clusters: float = 1.0
    pick: str = "random"
    name: str = field(default="cluster_margin", init=False)
    measure: str = field(default="margin", init=False)
    needs_embeddings: bool = field(default=True, init=False)
    needs_uncertainty: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.candidates >= 1:
            raise InvalidOptionError(
                f"cluster_margin option 'candidates' must be >= 1 (a multiple of the budget), got {self.candidates}",
                option="candidates",
            )
        if not self.clusters > 0:
            raise InvalidOptionError(
                f"cluster_margin option 'clusters' must be > 0 (a multiple of the budget), got {self.clusters}",
                option="clusters",
            )
        if self.pick not in CLUSTER_MARGIN_PICKS:
            raise UnknownStrategyError(self.pick, CLUSTER_MARGIN_PICKS, kind="cluster_margin pick mode")

    def _select(self, pool: PoolView, budget: int) -> Selection:
        x = pool.embeddings_for(self.name)
        u = pool.uncertainty_for(self.name, self.measure)
        usable = np.flatnonzero(pool.usable)
        ranked = usable[np.lexsort((usable, -u[usable]))]  # smallest margin first, ties to the lower index
        m = min(len(ranked), max(budget, int(np.ceil(self.candidates * budget))))
        while True:
            indices, scores, skipped = self._from_candidates(pool, x, u, ranked[:m], budget)
            # near-duplicates among the candidates can leave the batch short: widen the filter (never past the pool)
            if len(indices) >= budget or m >= len(ranked):
                break
            m = min(len(ranked), 2 * m)
        return Selection(
            indices=indices,
            scores=scores,
            clusters=coarse_clusters(x[indices], pool.seed),
            skipped=skipped,
        )

    def _from_candidates(
        self, pool: PoolView, x: NDArray[np.float32], u: NDArray[np.float64], cand: NDArray[np.int64], budget: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], int]:
        xc = x[cand]
        k = int(min(len(cand), max(1, round(self.clusters * budget))))
        assign = kmeans(xc, k, seed=pool.seed).assignment
        if self.pick == "random":
            within = np.random.default_rng(pool.seed).permutation(len(cand)).astype(np.int64)
        else:
            within = np.arange(len(cand), dtype=np.int64)  # ``cand`` is already most uncertain first
        order = round_robin(assign, within)
        cover = Cover(xc, pool.reference_embeddings, pool.min_distance)
        taken: list[int] = []
        skipped = 0
        for position in order.tolist():
            if len(taken) == budget:
                break
            if cover.is_duplicate(position):
                skipped += 1
                continue
            taken.append(position)
            cover.add(position)
        rows = np.asarray(taken, dtype=np.int64)
        indices = cand[rows].astype(np.int64)
        return indices, u[indices].astype(np.float64), skipped
