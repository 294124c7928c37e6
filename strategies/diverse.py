"""Strategies that use embeddings: k-center (core-set), k-means, and the uncertainty × diversity hybrid.

References:
- k-center greedy / core-set: O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
  Approach", ICLR 2018.
- hybrid: the candidate-then-diversify scheme of diverse mini-batch active learning (F. Zhdanov, "Diverse
  mini-batch Active Learning", 2019) and of Cluster-Margin (G. Citovsky et al., "Batch Active Learning at Scale",
  NeurIPS 2021): take the M most uncertain items (M = ``candidates`` × budget), cluster them into ``budget`` groups
  with k-means and take each group's most uncertain member. The alternative ``diversify: greedy`` chooses the subset
  by the greedy of ``strategies.diversity`` with key uncertainty^(1-w) · distance^w (``w = 1``: k-center restricted
  to the candidates). ``weight = 0`` is exactly uncertainty ranking in both modes. On the digits benchmark
  (docs/BENCHMARKS.md) the k-means mode needed 27–43 % of random's labels, the greedy mode 37–56 %.
- k-means: FAISS k-means with k = ``clusters`` × budget, one item per cluster (its most uncertain member, or the
  one nearest the centroid), clusters taken in order of their representative's uncertainty (or their size).

Every strategy here starts from the reference set (labeled and queued items), so a new batch fills gaps instead of
re-covering them, and honours ``PoolView.min_distance``. Each returns ``clusters``: a coarse grouping (about √k
groups) of the selected items that Label Studio uses to serve each annotator from the groups they labeled least.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from strategies._validate import check_budget
from strategies.base import PoolView, Selection
from strategies.basic import ranked_without_duplicates
from strategies.diversity import coarse_clusters, greedy_select
from strategies.errors import EmptyPoolError, InvalidOptionError, PoolExhaustedError, UnknownStrategyError
from strategies.index import kmeans
from strategies.uncertainty import UNCERTAINTY_MEASURES

PICK_MODES = ("uncertain", "centroid")
DIVERSIFY_MODES = ("kmeans", "greedy")


def _embeddings(pool: PoolView, name: str) -> NDArray[np.float32]:
    if pool.embeddings is None:
        raise InvalidOptionError(f"strategy {name!r} needs embeddings in the PoolView")
    return pool.embeddings


def _usable(pool: PoolView) -> NDArray[np.bool_]:
    if pool.uncertainty is None:
        return np.ones(len(pool), dtype=bool)
    return ~np.isnan(np.asarray(pool.uncertainty, dtype=np.float64))


def _check_measure(measure: str) -> str:
    measure = measure.replace("-", "_")
    if measure not in UNCERTAINTY_MEASURES:
        raise UnknownStrategyError(measure, UNCERTAINTY_MEASURES, kind="uncertainty measure")
    return measure


@dataclass(frozen=True)
class KCenterStrategy:
    """k-center greedy over all selectable items: each pick is the item farthest from everything selected,
    queued or labeled. Ignores uncertainty (except to exclude items with none)."""

    name: str = field(default="kcenter", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def select(self, pool: PoolView, budget: int) -> Selection:
        x = _embeddings(pool, self.name)
        usable = _usable(pool)
        picked = greedy_select(
            x,
            budget,
            priority=np.where(usable, 1.0, np.nan),
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


@dataclass(frozen=True)
class HybridStrategy:
    """Uncertainty first, then diversity among the most uncertain: see the module docstring.

    ``diversify``: ``kmeans`` (default) clusters the candidates into ``budget`` groups and takes each group's most
    uncertain member (diverse mini-batch active learning); ``greedy`` picks by uncertainty^(1-w) · distance^w,
    where the distance is to everything selected, queued or labeled. ``weight`` 0 turns diversity off (exactly
    uncertainty ranking) in both modes; it sets the trade-off of the greedy mode.
    """

    measure: str = "margin"
    candidates: float = 10.0
    weight: float = 0.5
    diversify: str = "kmeans"
    name: str = field(default="hybrid", init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", _check_measure(self.measure))
        if not self.candidates >= 1:
            raise InvalidOptionError(
                f"hybrid option 'candidates' must be >= 1 (a multiple of the budget), got {self.candidates}"
            )
        if not 0.0 <= self.weight <= 1.0:
            raise InvalidOptionError(f"hybrid option 'weight' must be in [0, 1], got {self.weight}")
        if self.diversify not in DIVERSIFY_MODES:
            raise UnknownStrategyError(self.diversify, DIVERSIFY_MODES, kind="hybrid diversify mode")

    def select(self, pool: PoolView, budget: int) -> Selection:
        budget = check_budget(budget)
        x = _embeddings(pool, self.name)
        if pool.uncertainty is None:
            raise InvalidOptionError("strategy 'hybrid' needs uncertainty in the PoolView")
        u = np.asarray(pool.uncertainty, dtype=np.float64)
        usable = np.flatnonzero(~np.isnan(u))
        if len(usable) == 0:
            raise EmptyPoolError(len(u))
        if budget > len(usable):
            raise PoolExhaustedError(len(usable), budget)
        if self.weight == 0.0:
            return ranked_without_duplicates(pool, u, budget)
        m = min(len(usable), max(budget, int(np.ceil(self.candidates * budget))))
        # the most uncertain first (ties: lower index), as top_k would order them
        ranked = usable[np.lexsort((usable, -u[usable]))]
        while True:
            chosen = self._diversify(pool, x, u, ranked[:m], budget)
            # near-duplicates among the M candidates can leave the batch short: widen M (never past the pool)
            if len(chosen.indices) >= budget or m >= len(ranked):
                return chosen
            m = min(len(ranked), 2 * m)

    def _diversify(
        self, pool: PoolView, x: NDArray[np.float32], u: NDArray[np.float64], order: NDArray[np.int64], budget: int
    ) -> Selection:
        """Choose ``budget`` of the candidates ``order`` (pool indices, most uncertain first)."""
        if self.diversify == "kmeans":
            candidates = PoolView(
                uncertainty=u[order],
                embeddings=np.ascontiguousarray(x[order]),
                reference_embeddings=pool.reference_embeddings,
                seed=pool.seed,
                min_distance=pool.min_distance,
            )
            chosen = KMeansStrategy(measure=self.measure, clusters=1.0, pick="uncertain").select(candidates, budget)
            return replace(chosen, indices=order[chosen.indices])
        picked = greedy_select(
            x[order],
            budget,
            priority=u[order],
            weight=self.weight,
            reference=pool.reference_embeddings,
            min_distance=pool.min_distance,
        )
        indices = order[picked.indices]
        return Selection(
            indices=indices,
            scores=picked.keys,
            clusters=coarse_clusters(x[indices], pool.seed),
            skipped=picked.skipped,
        )


@dataclass(frozen=True)
class KMeansStrategy:
    """One item per k-means cluster (FAISS), k = ``clusters`` × budget."""

    measure: str = "margin"
    clusters: float = 1.0
    pick: str = "uncertain"
    name: str = field(default="kmeans", init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", _check_measure(self.measure))
        if not self.clusters >= 1:
            raise InvalidOptionError(
                f"kmeans option 'clusters' must be >= 1 (a multiple of the budget), got {self.clusters}"
            )
        if self.pick not in PICK_MODES:
            raise UnknownStrategyError(self.pick, PICK_MODES, kind="kmeans pick mode")

    def select(self, pool: PoolView, budget: int) -> Selection:
        budget = check_budget(budget)
        x = _embeddings(pool, self.name)
        u = None if pool.uncertainty is None else np.asarray(pool.uncertainty, dtype=np.float64)
        usable = np.flatnonzero(_usable(pool))
        if len(usable) == 0:
            raise EmptyPoolError(len(pool))
        if budget > len(usable):
            raise PoolExhaustedError(len(usable), budget)
        k = int(min(len(usable), max(budget, round(self.clusters * budget))))
        xs = x[usable]
        clustering = kmeans(xs, k, seed=pool.seed)
        centroids, assign = clustering.centroids, clustering.assignment
        by_uncertainty = self.pick == "uncertain" and u is not None
        # within a cluster: its most uncertain member, or the member nearest the centroid
        quality = u[usable] if by_uncertainty and u is not None else -distance_to_own_centroid(xs, centroids, assign)
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
            picked = greedy_select(
                x[candidates],
                budget,
                priority=np.arange(len(candidates), 0, -1, dtype=np.float64),
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


__all__ = ["PICK_MODES", "HybridStrategy", "KCenterStrategy", "KMeansStrategy", "distance_to_own_centroid"]
