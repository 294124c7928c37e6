"""The strategies that need no embeddings: rank by uncertainty, or at random (the baseline to beat)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection
from strategies.diversity import greedy_select
from strategies.errors import InvalidOptionError, StrategyError, UnknownStrategyError
from strategies.selectors import top_k
from strategies.uncertainty import UNCERTAINTY_MEASURES, random_scores

__all__ = ["RandomStrategy", "UncertaintyStrategy"]


@dataclass(frozen=True)
class UncertaintyStrategy:
    """Select the most uncertain items. It only ranks: the orchestrator computes ``pool.uncertainty`` with
    ``measure`` beforehand (per item, or per box then ``aggregate_boxes`` for detection)."""

    measure: str
    needs_embeddings: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.measure not in UNCERTAINTY_MEASURES:
            raise UnknownStrategyError(self.measure, UNCERTAINTY_MEASURES, kind="uncertainty measure")

    @property
    def name(self) -> str:
        return self.measure

    def select(self, pool: PoolView, budget: int) -> Selection:
        if pool.uncertainty is None:
            raise StrategyError(
                f"strategy {self.name!r} ranks by uncertainty: fill PoolView.uncertainty with the "
                f"{self.measure!r} measure first"
            )
        scores = np.asarray(pool.uncertainty, dtype=np.float64)
        if pool.min_distance > 0:
            return ranked_without_duplicates(pool, scores, budget)
        indices = top_k(scores, budget)
        return Selection(indices=indices, scores=scores[indices])


@dataclass(frozen=True)
class RandomStrategy:
    """Select uniformly at random, reproducibly from ``pool.seed``. Items with NaN uncertainty (when
    ``pool.uncertainty`` is given) are still excluded: a failed or excluded item is never worth labeling."""

    name: str = field(default="random", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=False, init=False)

    def select(self, pool: PoolView, budget: int) -> Selection:
        draws = random_scores(len(pool), pool.seed)
        if pool.uncertainty is not None:
            draws = np.where(np.isnan(pool.uncertainty), np.nan, draws)
        if pool.min_distance > 0:
            return ranked_without_duplicates(pool, draws, budget)
        indices = top_k(draws, budget)
        return Selection(indices=indices, scores=draws[indices])


def ranked_without_duplicates(pool: PoolView, scores: NDArray[np.float64], budget: int) -> Selection:
    """The ``budget`` best by ``scores`` (NaN excluded), passing over near-duplicates of what is already taken."""
    if pool.embeddings is None:
        raise InvalidOptionError("near-duplicate suppression (min_distance > 0) needs embeddings")
    picked = greedy_select(
        pool.embeddings,
        budget,
        priority=scores,
        weight=0.0,
        reference=pool.reference_embeddings,
        min_distance=pool.min_distance,
    )
    return Selection(indices=picked.indices, scores=scores[picked.indices], skipped=picked.skipped)
