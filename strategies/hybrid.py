"""The uncertainty × diversity hybrid: uncertainty first, then diversity among the most uncertain.

The candidate-then-diversify scheme of diverse mini-batch active learning (F. Zhdanov, "Diverse mini-batch Active
Learning", 2019) and of Cluster-Margin (G. Citovsky et al., "Batch Active Learning at Scale", NeurIPS 2021): take
the M most uncertain items (M = ``candidates`` × budget), cluster them into ``budget`` groups with k-means and take
each group's most uncertain member (``pick: uncertain``), or the member nearest the group's centroid (``pick:
centroid``, the representative pick of Zhdanov's paper: it passes over the outliers a young model is unsure of,
which is what ``cold_hybrid`` uses while few items are labeled). The alternative ``diversify: greedy`` chooses the
subset by the greedy of ``strategies.greedy`` with key uncertainty^(1-w) · distance^w (``w = 1``: k-center
restricted to the candidates). ``weight = 0`` is exactly uncertainty ranking in both modes. On the digits benchmark
(docs/BENCHMARKS.md) the k-means mode needed 27–43 % of random's labels, the greedy mode 37–56 %.

It composes the other strategies instead of re-implementing them: the k-means mode runs ``KMeansStrategy`` on the
candidates, ``weight = 0`` is ``rank_by`` (what uncertainty sampling runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection, StrategyBase
from strategies.errors import InvalidOptionError, UnknownStrategyError
from strategies.greedy import greedy_rows
from strategies.index import coarse_clusters
from strategies.kmeans_sampling import KMeansStrategy
from strategies.selectors import rank_by
from strategies.uncertainty import check_measure

__all__ = ["DIVERSIFY_MODES", "HYBRID_PICKS", "HybridStrategy"]

DIVERSIFY_MODES = ("kmeans", "greedy")
HYBRID_PICKS = ("uncertain", "centroid")


@dataclass(frozen=True)
class HybridStrategy(StrategyBase):
    """Uncertainty first, then diversity among the most uncertain: see the module docstring.

    ``diversify``: ``kmeans`` (default) clusters the candidates into ``budget`` groups and takes each group's most
    uncertain member, or with ``pick: centroid`` the member nearest its centroid (diverse mini-batch active
    learning); ``greedy`` picks by uncertainty^(1-w) · distance^w,
    where the distance is to everything selected, queued or labeled. ``weight`` 0 turns diversity off (exactly
    uncertainty ranking) in both modes; it sets the trade-off of the greedy mode.
    """

    measure: str = "margin"
    candidates: float = 10.0
    weight: float = 0.5
    diversify: str = "kmeans"
    pick: str = "uncertain"
    name: str = field(default="hybrid", init=False)
    needs_embeddings: bool = field(default=True, init=False)
    needs_uncertainty: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", check_measure(self.measure))
        if not self.candidates >= 1:
            raise InvalidOptionError(
                f"hybrid option 'candidates' must be >= 1 (a multiple of the budget), got {self.candidates}",
                option="candidates",
            )
        if not 0.0 <= self.weight <= 1.0:
            raise InvalidOptionError(f"hybrid option 'weight' must be in [0, 1], got {self.weight}", option="weight")
        if self.diversify not in DIVERSIFY_MODES:
            raise UnknownStrategyError(self.diversify, DIVERSIFY_MODES, kind="hybrid diversify mode")
        if self.pick not in HYBRID_PICKS:
            raise UnknownStrategyError(self.pick, HYBRID_PICKS, kind="hybrid pick mode")
        if self.pick != "uncertain" and self.diversify != "kmeans":
            raise InvalidOptionError(
                f"hybrid option 'pick: {self.pick}' needs 'diversify: kmeans' (the greedy mode has no clusters)",
                option="pick",
            )

    def _select(self, pool: PoolView, budget: int) -> Selection:
        x = pool.embeddings_for(self.name)
        u = pool.uncertainty_for(self.name, self.measure)
        if self.weight == 0.0:
            return rank_by(pool, u, budget)
        usable = np.flatnonzero(pool.usable)
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
                embeddings=x[order],
                reference_embeddings=pool.reference_embeddings,
                seed=pool.seed,
                min_distance=pool.min_distance,
            )
            chosen = KMeansStrategy(measure=self.measure, clusters=1.0, pick=self.pick).select(candidates, budget)
            indices = order[chosen.indices]
            # a centroid pick is ranked by its cluster's size; report each item's uncertainty, as the other modes do
            return replace(chosen, indices=indices, scores=u[indices].astype(np.float64))
        picked = greedy_rows(
            x[order],
            budget,
            u[order],
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
