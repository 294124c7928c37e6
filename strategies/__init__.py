"""Active-learning strategies: pure functions over numpy arrays.

Scores (``uncertainty``, ``detection``) are computed apart from selection (``selectors``). Each strategy lives in
the module named after it (``uncertainty_sampling``, ``random_sampling``, ``kcenter``, ``kmeans_sampling``,
``hybrid``, ``class_balance``, ``badge``, ``cluster_margin``, ``typiclust``, ``cold_hybrid``), inherits the
validating template ``StrategyBase`` (``base``), and is built by name from the ``registry``; ``cover`` is the
near-duplicate bookkeeping of the strategies that pick one item at a time, ``duplicates`` the perceptual-hash
matching.
``greedy`` is the exact lazy greedy k-center and the hybrid share; ``index`` the vector search and k-means
backends. Nothing here touches a model, a database or Label Studio, and importing the package
imports neither FAISS nor torch.
"""

from strategies.badge import BadgeStrategy, gradient_embeddings
from strategies.base import PoolView, Selection, Strategy, StrategyBase
from strategies.class_balance import ClassBalanced
from strategies.cluster_margin import ClusterMarginStrategy, round_robin
from strategies.cold_hybrid import ColdHybridStrategy
from strategies.detection import EXCLUDE, REDUCERS, aggregate_boxes
from strategies.duplicates import MAX_HASH_DISTANCE, hamming, hash_duplicates
from strategies.errors import (
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    StrategyError,
    UnknownStrategyError,
)
from strategies.greedy import GreedyResult, greedy_select
from strategies.hybrid import HybridStrategy
from strategies.index import (
    KMeansResult,
    VectorIndex,
    center_in_place,
    coarse_clusters,
    kmeans,
    make_index,
    min_cosine_distance,
)
from strategies.kcenter import KCenterStrategy, covering_radius
from strategies.kmeans_sampling import KMeansStrategy
from strategies.random_sampling import RandomStrategy
from strategies.registry import (
    STRATEGIES,
    StrategyFactory,
    canonical_name,
    check_options,
    get_strategy,
    strategy_names,
)
from strategies.selectors import rank_by, top_k
from strategies.typiclust import TypiClustStrategy, typicality
from strategies.uncertainty import (
    UNCERTAINTY_MEASURES,
    entropy,
    least_confidence,
    margin,
    random_scores,
    ratio,
    uncertainty_scores,
)
from strategies.uncertainty_sampling import UncertaintyStrategy

__all__ = [
    "EXCLUDE",
    "MAX_HASH_DISTANCE",
    "REDUCERS",
    "STRATEGIES",
    "UNCERTAINTY_MEASURES",
    "BadgeStrategy",
    "ClassBalanced",
    "ClusterMarginStrategy",
    "ColdHybridStrategy",
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
    "StrategyBase",
    "StrategyError",
    "StrategyFactory",
    "TypiClustStrategy",
    "UncertaintyStrategy",
    "UnknownStrategyError",
    "VectorIndex",
    "aggregate_boxes",
    "canonical_name",
    "center_in_place",
    "check_options",
    "coarse_clusters",
    "covering_radius",
    "entropy",
    "get_strategy",
    "gradient_embeddings",
    "greedy_select",
    "hamming",
    "hash_duplicates",
    "kmeans",
    "least_confidence",
    "make_index",
    "margin",
    "min_cosine_distance",
    "random_scores",
    "rank_by",
    "ratio",
    "round_robin",
    "strategy_names",
    "top_k",
    "typicality",
    "uncertainty_scores",
]
