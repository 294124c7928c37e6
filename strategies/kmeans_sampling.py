"""k-means sampling: FAISS k-means with k = ``clusters`` × budget, one item per cluster.

Each cluster is represented by its most uncertain member (``pick: uncertain``) or the member nearest its centroid
(``pick: centroid``); clusters are taken in order of their representative's uncertainty (or of their size). The
module is not called ``kmeans`` so that it never shadows ``strategies.kmeans``, the clustering function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection, StrategyBase
from strategies.errors import InvalidOptionError, UnknownStrategyError
from strategies.greedy import greedy_rows
from strategies.index import coarse_clusters, kmeans
from strategies.uncertainty import check_measure

__all__ = ["PICK_MODES", "KMeansStrategy", "distance_to_own_centroid"]

PICK_MODES = ("uncertain", "centroid")
_DISTANCE_DECIMALS = 5  # float32 cosine distances carry ~1e-7 of rounding noise


@dataclass(frozen=True)
class KMeansStrategy(StrategyBase):
    """One item per k-means cluster (FAISS), k = ``clusters`` × budget; near-duplicates of a selected or
    reference item are passed over in favour of the next cluster's representative."""

    measure: str = "margin"
    clusters: float = 1.0
    pick: str = "uncertain"
    name: str = field(default="kmeans", init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", check_measure(self.measure))
        if not self.clusters >= 1:
            raise InvalidOptionError(
                f"kmeans option 'clusters' must be >= 1 (a multiple of the budget), got {self.clusters}",
                option="clusters",
            )
        if self.pick not in PICK_MODES:
            raise UnknownStrategyError(self.pick, PICK_MODES, kind="kmeans pick mode")

    def _select(self, pool: PoolView, budget: int) -> Selection:
        x = pool.embeddings_for(self.name)
        u = pool.uncertainty
        usable = np.flatnonzero(pool.usable)
        k = int(min(len(usable), max(budget, round(self.clusters * budget))))
        xs = x[usable]
        clustering = kmeans(xs, k, seed=pool.seed)
        centroids, assign = clustering.centroids, clustering.assignment
        by_uncertainty = self.pick == "uncertain" and u is not None
        # within a cluster: its most uncertain member, or the member nearest the centroid. Distances are rounded to
        # float32 resolution: the members of a two-item cluster are equidistant from its (spherical) centroid, and
        # such a tie must go to the lower index, as every tie here does, not to rounding noise.
        quality = (
            u[usable]
            if by_uncertainty and u is not None
            else -np.round(distance_to_own_centroid(xs, centroids, assign), _DISTANCE_DECIMALS)
        )
        order = np.lexsort((np.arange(len(usable)), -quality, assign))
        first = np.ones(len(order), dtype=bool)
        first[1:] = assign[order][1:] != assign[order][:-1]
        reps = order[first]
        # clusters in order of their representative's uncertainty, or of their size
        rank_key = quality[reps] if by_uncertainty else np.bincount(assign, minlength=k)[assign[reps]].astype(float)
        perm = np.lexsort((reps, -rank_key))
        reps, rep_scores = reps[perm], rank_key[perm]
        rest = np.setdiff1d(np.arange(len(usable)), reps)
        rest = rest[np.lexsort((rest, -quality[rest]))]  # only used if clusters come out empty
        ranked = np.concatenate([reps, rest])
        candidates = usable[ranked]
        scores = np.concatenate([rep_scores, quality[rest]])
        if pool.min_distance > 0:
            picked = greedy_rows(
                x[candidates],
                budget,
                np.arange(len(candidates), 0, -1, dtype=np.float64),
                weight=0.0,
                reference=pool.reference_embeddings,
                min_distance=pool.min_distance,
            )
            chosen, skipped = picked.indices, picked.skipped
        else:
            chosen, skipped = np.arange(budget), 0
        indices = candidates[chosen].astype(np.int64)
        return Selection(
            indices=indices,
            scores=scores[chosen].astype(np.float64),
            clusters=coarse_clusters(x[indices], pool.seed),
            skipped=skipped,
        )


def distance_to_own_centroid(
    x: NDArray[np.float32], centroids: NDArray[np.float32], assign: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Each row's cosine distance to its own cluster's centroid."""
    c = centroids[assign]
    norms = np.linalg.norm(c, axis=1)
    return 1.0 - np.einsum("ij,ij->i", x, c) / np.maximum(norms, 1e-12)
