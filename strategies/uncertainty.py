"""Uncertainty measures: one number per item from its per-class scores.

Every measure maps an (N, K) array of per-class scores to an (N,) float64 array in [0, 1] where HIGHER = MORE
UNCERTAIN = more worth labeling. A row is either

* a classification probability vector (sums to 1), or
* the class scores of one detected box from a YOLO detector: independent sigmoids, each in [0, 1], that need
  not sum to 1.

With p_(1) >= p_(2) the two largest scores of a row (p_(2) = 0 when K == 1):

================== ============================= =========================================================
measure            formula                       reads as
================== ============================= =========================================================
least_confidence   1 - p_(1)                     the model's best guess is weak
margin             1 - (p_(1) - p_(2))           the two best classes are close
entropy            H(q) / log K, q = p / sum(p)  the scores are spread over many classes
ratio              p_(2) / p_(1)                 the runner-up is nearly as strong as the winner
================== ============================= =========================================================

All four only look at the values of a row, never at their order, and all four are 0 for a one-hot row. The
first two read absolute scores, so for detection they also rise when the box itself is weak. Entropy and
ratio are scale-free: they measure confusion *between* classes, so a box scored [0.1, 0.1] is as uncertain as
one scored [0.9, 0.9]. Entropy normalises a row to sum to 1 first (a row of zeros becomes uniform, so 1.0);
K == 1 has no second class to be confused with, so entropy and ratio are 0.0 there. For ratio, p_(1) == 0
gives 1.0.

``uncertainty_scores`` is the boundary: it validates once and dispatches. The named measure functions
validate too (they are thin wrappers); the underscore kernels assume a clean float64 block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies._validate import check_count, check_name, first_bad, is_int, real_array
from strategies.errors import InvalidOptionError, InvalidScoresError

__all__ = [
    "UNCERTAINTY_MEASURES",
    "entropy",
    "least_confidence",
    "margin",
    "random_scores",
    "ratio",
    "uncertainty_scores",
]

UNCERTAINTY_MEASURES: tuple[str, ...] = ("least_confidence", "margin", "entropy", "ratio")

# Slack for probabilities that float arithmetic pushed just above 1 (a softmax summed in float32, say).
_ABOVE_ONE_TOLERANCE = 1e-6
# Rows per block: the kernels work on float64 copies, so memory stays bounded (~40 MB at K = 80).
_BLOCK_ROWS = 1 << 16

Kernel = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _top_two(p: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(p_(1), p_(2)) per row, with p_(2) = 0 when K == 1. O(K) per row: partition, not sort."""
    k = p.shape[1]
    if k == 1:
        return p[:, 0], np.zeros(p.shape[0])
    top = np.partition(p, k - 2, axis=1)
    return top[:, k - 1], top[:, k - 2]


def _least_confidence(p: NDArray[np.float64]) -> NDArray[np.float64]:
    result: NDArray[np.float64] = 1.0 - p.max(axis=1)
    return result


def _margin(p: NDArray[np.float64]) -> NDArray[np.float64]:
    first, second = _top_two(p)
    result: NDArray[np.float64] = 1.0 - (first - second)
    return result


def _ratio(p: NDArray[np.float64]) -> NDArray[np.float64]:
    if p.shape[1] == 1:
        return np.zeros(p.shape[0])
    first, second = _top_two(p)
    return np.divide(second, first, out=np.ones_like(first), where=first > 0)


def _entropy(p: NDArray[np.float64]) -> NDArray[np.float64]:
    k = p.shape[1]
    if k == 1:
        return np.zeros(p.shape[0])
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    log_q = np.zeros_like(q)
    np.log(q, out=log_q, where=q > 0)  # 0 * log 0 = 0, without a warning
    h = -np.einsum("ij,ij->i", q, log_q) / np.log(k)
    # A row of zeros prefers no class: it is the uniform distribution, entropy exactly 1.
    h[total[:, 0] == 0] = 1.0
    # Float error can put a uniform row a hair above 1; "+ 0.0" turns the -0.0 of one-hot rows into 0.0.
    result: NDArray[np.float64] = np.clip(h, 0.0, 1.0) + 0.0
    return result


_KERNELS: dict[str, Kernel] = {
    "least_confidence": _least_confidence,
    "margin": _margin,
    "entropy": _entropy,
    "ratio": _ratio,
}


def _score_matrix(scores: ArrayLike) -> NDArray[np.number]:
    arr = real_array(scores, "scores", ndim=2)
    if arr.shape[1] < 1:
        raise InvalidScoresError(f"scores must have at least one class column, got shape {arr.shape}")
    first_bad(arr, "row", upper=1.0 + _ABOVE_ONE_TOLERANCE)
    return arr


def _apply(kernel: Kernel, arr: NDArray[np.number]) -> NDArray[np.float64]:
    """Run ``kernel`` block by block on float64 copies clipped to [0, 1]; the caller's array is untouched."""
    n = arr.shape[0]
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, _BLOCK_ROWS):
        block = np.clip(arr[start : start + _BLOCK_ROWS].astype(np.float64), 0.0, 1.0)
        out[start : start + block.shape[0]] = kernel(block)
    return out


def check_measure(method: object) -> str:
    """The registered spelling of an uncertainty measure, or UnknownStrategyError listing the valid ones."""
    return check_name(method, UNCERTAINTY_MEASURES, "uncertainty measure")


def uncertainty_scores(scores: ArrayLike, method: str) -> NDArray[np.float64]:
    """Score each row of ``scores`` (N, K) with the measure ``method``; higher = more uncertain, in [0, 1].

    ``method`` is one of ``UNCERTAINTY_MEASURES`` ("least-confidence" spelling accepted). Input must be 2-D
    with K >= 1, finite, >= 0 and <= 1 + 1e-6 (values a hair above 1 are clipped); any float or integer dtype
    works. An empty (0, K) input gives an empty result.

    Raises:
        UnknownStrategyError: ``method`` is not a known measure (the message lists them).
        InvalidScoresError: wrong shape or dtype, or a non-finite, negative or > 1 value (the message names
            the row).
    """
    kernel = _KERNELS[check_measure(method)]
    return _apply(kernel, _score_matrix(scores))


def least_confidence(p: ArrayLike) -> NDArray[np.float64]:
    """``1 - max_k p_k``: how little the model trusts its best guess.

    Validates like ``uncertainty_scores``.
    """
    return uncertainty_scores(p, "least_confidence")


def margin(p: ArrayLike) -> NDArray[np.float64]:
    """``1 - (p_(1) - p_(2))``: the two best classes are hard to tell apart (p_(2) = 0 when K == 1).

    Validates like ``uncertainty_scores``.
    """
    return uncertainty_scores(p, "margin")


def entropy(p: ArrayLike) -> NDArray[np.float64]:
    """``H(q) / log K`` with ``q = p / sum(p)``: 1 for a uniform row, 0 for one-hot (and for K == 1).

    Row-normalising lets detector rows (independent sigmoids) be read as a class distribution; a row of zeros
    is uniform, so 1.0. Validates like ``uncertainty_scores``.
    """
    return uncertainty_scores(p, "entropy")


def ratio(p: ArrayLike) -> NDArray[np.float64]:
    """``p_(2) / p_(1)``: the runner-up is nearly as strong as the winner; 1.0 if p_(1) == 0, 0.0 if K == 1.

    Validates like ``uncertainty_scores``.
    """
    return uncertainty_scores(p, "ratio")


def random_scores(n: int, seed: int) -> NDArray[np.float64]:
    """``n`` draws uniform in [0, 1) from ``np.random.default_rng(seed)``: the random baseline's scores.

    The same (n, seed) always gives the same draws, and draw i does not depend on n (a larger pool extends the
    sequence), so the random baseline is reproducible as long as the pool is listed in a stable order.

    Raises:
        InvalidOptionError: ``n`` is not an integer >= 0, or ``seed`` is not an integer >= 0.
    """
    n = check_count(n, "n")
    if not is_int(seed) or int(seed) < 0:
        raise InvalidOptionError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng(int(seed)).random(n)
