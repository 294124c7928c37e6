"""Uncertainty sampling: select the most uncertain items (least confidence, margin, entropy or ratio).

The measures themselves (probabilities → one score per item) are in ``strategies.uncertainty``; this strategy
only ranks the scores the orchestrator computed into ``PoolView.uncertainty`` with ``measure``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.base import PoolView, Selection, StrategyBase
from strategies.selectors import rank_by
from strategies.uncertainty import check_measure

__all__ = ["UncertaintyStrategy"]


@dataclass(frozen=True)
class UncertaintyStrategy(StrategyBase):
    """Select the most uncertain items. The orchestrator computes ``pool.uncertainty`` with ``measure``
    beforehand (per item, or per box then ``aggregate_boxes`` for detection); the name is the measure's."""

    measure: str
    name: str = field(init=False)
    needs_embeddings: bool = field(default=False, init=False)
    needs_uncertainty: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        measure = check_measure(self.measure)
        object.__setattr__(self, "measure", measure)
        object.__setattr__(self, "name", measure)

    def _select(self, pool: PoolView, budget: int) -> Selection:
        return rank_by(pool, pool.uncertainty_for(self.name, self.measure), budget)
