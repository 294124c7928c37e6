"""Active-learning strategies: pure functions over numpy arrays.

Scores (``uncertainty``, ``detection``) are computed apart from selection (``selectors``); strategies combine
them behind one interface (``Strategy.select(PoolView, budget) -> Selection``) and are built by name from the
registry. Nothing here touches a model, a database or Label Studio.
"""

from strategies.balance import ClassBalanced
from strategies.base import PoolView, Selection, Strategy
from strategies.basic import RandomStrategy, UncertaintyStrategy
from strategies.detection import EXCLUDE, REDUCERS, aggregate_boxes
from strategies.diverse import HybridStrategy, KCenterStrategy, KMeansStrategy
from strategies.diversity import GreedyResult, coarse_clusters, covering_radius, greedy_select
from strategies.errors import (
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    StrategyError,
    UnknownStrategyError,
)
from strategies.index import KMeansResult, VectorIndex, center_in_place, kmeans, make_index, min_cosine_distance
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
    "ClassBalanced",
    "EmptyPoolError",
    "GreedyResult",
    "HybridStrategy",
    "InvalidBudgetError",
    "InvalidOptionError",
    "InvalidScoresError",
    "KCenterStrategy",
    "KMeansResult",
    "KMeansStrategy",
    "PoolExhaustedError",
    "PoolView",
    "RandomStrategy",
    "Selection",
    "Strategy",
    "StrategyError",
    "StrategyFactory",
    "UncertaintyStrategy",
    "UnknownStrategyError",
    "VectorIndex",
    "aggregate_boxes",
    "center_in_place",
    "coarse_clusters",
    "covering_radius",
    "entropy",
    "get_strategy",
    "greedy_select",
    "kmeans",
    "least_confidence",
    "make_index",
    "margin",
    "min_cosine_distance",
    "random_scores",
    "ratio",
    "strategy_names",
    "top_k",
    "uncertainty_scores",
]
