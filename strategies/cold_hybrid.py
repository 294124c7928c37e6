"""``cold_hybrid``: the hybrid with a cold-start phase — representative picks while few items are labeled.

Which kind of item helps depends on how many are labeled (G. Hacohen, A. Dekel, D. Weinshall, "Active Learning on a
Budget: Opposite Strategies Suit High and Low Budgets", ICML 2022): with few labels the model's uncertainty points
at outliers and the best items are representative ones; with more, uncertain ones. The TypiClust-then-Margin
schedule (TCM: P. Doucet et al., "Bridging Diversity and Uncertainty in Active Learning with Self-Supervised
Pre-Training") switches from one to the other once. Here both phases are the hybrid, so the
batch stays diverse and in the uncertain region throughout:

- cold, while fewer than ``per_class`` × (number of classes) items are labeled or queued (the reference set):
  the ``cold_candidates`` × budget most uncertain items, clustered into ``budget`` groups, each group's member
  nearest its centroid (the representative pick of diverse mini-batch active learning, F. Zhdanov 2019);
- warm, after: the hybrid's usual pick (each group's most uncertain member) among ``candidates`` × budget.

The number of classes is read from ``PoolView.classes`` (one column per model class; curate fills it for every
selection). On scikit-learn digits (10 classes, 50 random labels, steps of 50; README "Does it save labels?") the
cold phase is the first round, and this strategy needed <= 50 % of random's labels at every horizon of 4–10 rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strategies.base import PoolView, Selection, StrategyBase
from strategies.errors import InvalidOptionError
from strategies.hybrid import HybridStrategy
from strategies.uncertainty import check_measure

__all__ = ["ColdHybridStrategy"]


@dataclass(frozen=True)
class ColdHybridStrategy(StrategyBase):
    """The hybrid's representative (centroid) pick while fewer than ``per_class`` items per class are labeled or
    queued, its most-uncertain pick after; see the module docstring. ``per_class: 0`` never runs the cold phase."""

    measure: str = "margin"
    candidates: float = 3.0
    cold_candidates: float = 10.0
    per_class: float = 10.0
    name: str = field(default="cold_hybrid", init=False)
    needs_embeddings: bool = field(default=True, init=False)
    needs_uncertainty: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", check_measure(self.measure))
        for option in ("candidates", "cold_candidates"):
            if not getattr(self, option) >= 1:
                raise InvalidOptionError(
                    f"cold_hybrid option {option!r} must be >= 1 (a multiple of the budget), got "
                    f"{getattr(self, option)}",
                    option=option,
                )
        if not self.per_class >= 0:
            raise InvalidOptionError(
                f"cold_hybrid option 'per_class' must be >= 0 (labeled items per class), got {self.per_class}",
                option="per_class",
            )

    def is_cold(self, pool: PoolView) -> bool:
        """Whether fewer than ``per_class`` items per class are labeled or queued (the pool's reference set)."""
        if pool.classes is None:
            raise InvalidOptionError(
                "strategy 'cold_hybrid' needs the predicted classes (PoolView.classes) to count the classes"
            )
        labeled = 0 if pool.reference_embeddings is None else len(pool.reference_embeddings)
        return labeled < self.per_class * pool.classes.shape[1]

    def _select(self, pool: PoolView, budget: int) -> Selection:
        if self.is_cold(pool):
            phase = HybridStrategy(measure=self.measure, candidates=self.cold_candidates, pick="centroid")
        else:
            phase = HybridStrategy(measure=self.measure, candidates=self.candidates)
        return phase.select(pool, budget)
