"""Random sampling: the baseline every other strategy must beat, reproducible from the pool's seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strategies.base import PoolView, Selection, StrategyBase
from strategies.selectors import rank_by
from strategies.uncertainty import random_scores

__all__ = ["RandomStrategy"]


@dataclass(frozen=True)
class RandomStrategy(StrategyBase):
    """Select uniformly at random, reproducibly from ``pool.seed``. Items with NaN uncertainty (when
    ``pool.uncertainty`` is given) are still excluded: a failed or excluded item is never worth labeling."""

    name: str = field(default="random", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=False, init=False)

    def _select(self, pool: PoolView, budget: int) -> Selection:
        draws = np.where(pool.usable, random_scores(len(pool), pool.seed), np.nan)
        return rank_by(pool, draws, budget)
