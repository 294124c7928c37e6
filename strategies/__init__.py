"""Active-learning strategies: pure functions over numpy arrays.

Scores (``uncertainty``, ``detection``) are computed apart from selection (``selectors``); strategies combine
them behind one interface (``Strategy.select(PoolView, budget) -> Selection``) and are built by name from the
registry. Nothing here touches a model, a database or Label Studio.
"""

from strategies.base import PoolView, Selection, Strategy
from strategies.basic import RandomStrategy, UncertaintyStrategy
from strategies.detection import EXCLUDE, REDUCERS, aggregate_boxes
from strategies.errors import (
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    StrategyError,
    UnknownStrategyError,
)
from strategies.registry import STRATEGIES, StrategyFactory, get_strategy, strategy_names
from strategies.selectors import top_k
from strategies.uncertainty import (
    UNCERTAINTY_MEASURES,
    entropy,
    least_confidence,
    margin,
    random_scores,
    ratio,
    uncertainty_scores,
)

__all__ = [
    "EXCLUDE",
    "REDUCERS",
    "STRATEGIES",
    "UNCERTAINTY_MEASURES",
    "EmptyPoolError",
    "InvalidBudgetError",
    "InvalidOptionError",
    "InvalidScoresError",
    "PoolExhaustedError",
    "PoolView",
    "RandomStrategy",
    "Selection",
    "Strategy",
    "StrategyError",
    "StrategyFactory",
    "UncertaintyStrategy",
    "UnknownStrategyError",
    "aggregate_boxes",
    "entropy",
    "get_strategy",
    "least_confidence",
    "margin",
    "random_scores",
    "ratio",
    "strategy_names",
    "top_k",
    "uncertainty_scores",
]
