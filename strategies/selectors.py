"""Selectors: turn one score per item into the indices of the items to label.

Tie-breaking is part of the contract, not an accident of the sort: among equal scores the LOWER index wins.
With a pool listed in a stable order (by item id, say) the same scores always give the same selection.
``top_k`` ranks scores alone; ``rank_by`` ranks a pool's items by a score and honours its near-duplicate
threshold, which is how every strategy that ranks by one number (uncertainty, random) selects.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies._validate import check_available, check_budget, real_array
from strategies.base import PoolView, Selection
from strategies.errors import InvalidScoresError
from strategies.greedy import greedy_rows

__all__ = ["rank_by", "top_k"]


def top_k(scores: ArrayLike, budget: int, *, candidates: ArrayLike | None = None) -> NDArray[np.int64]:
    """Indices of the ``budget`` highest scores, highest first; equal scores: lower index first.

    An item is available unless its score is NaN or ``candidates`` (a boolean mask like ``scores``) is False
    for it; unavailable items are never selected. O(N) plus O(budget log budget).

    Raises:
        InvalidBudgetError: ``budget`` is not an integer >= 1.
        InvalidScoresError: ``scores`` is not 1-D and real, or ``candidates`` is not a matching boolean mask.
        EmptyPoolError: no item is available.
        PoolExhaustedError: fewer than ``budget`` items are available.
    """
    budget = check_budget(budget)
    values = real_array(scores, "scores", ndim=1).astype(np.float64, copy=False)
    available = ~np.isnan(values)
    if candidates is not None:
        mask = np.asarray(candidates)
        if mask.dtype != np.bool_ or mask.shape != values.shape:
            raise InvalidScoresError(
                f"candidates must be a boolean mask of shape {values.shape}, "
                f"got dtype {mask.dtype} and shape {mask.shape}"
            )
        available &= mask
    positions = np.flatnonzero(available)  # ascending, so "lower index first" survives the steps below
    check_available(int(positions.shape[0]), values.shape[0], budget)
    return positions[_top_positions(values[positions], budget)].astype(np.int64, copy=False)


def _top_positions(values: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    """Positions of the k largest of ``values`` (no NaN, 1 <= k <= len), ranked, ties to the lower position.

    argpartition alone would cut a run of ties at the k-th value arbitrarily. So: find the k-th largest value
    v, take everything strictly above v (fewer than k, all of them belong), fill up with the first entries
    equal to v in position order, then stable-sort that small set by value descending.
    """
    kth = values[np.argpartition(values, values.shape[0] - k)[values.shape[0] - k]]
    above = np.flatnonzero(values > kth)
    at = np.flatnonzero(values == kth)[: k - above.shape[0]]
    chosen = np.concatenate([above, at])
    return chosen[np.argsort(-values[chosen], kind="stable")]


def rank_by(pool: PoolView, scores: NDArray[np.float64], budget: int) -> Selection:
    """The ``budget`` best items of ``pool`` by ``scores`` (NaN: excluded), highest first, ties to the lower index.

    With ``pool.min_distance > 0`` an item closer than that to a reference or an already-taken item is passed
    over (counted in ``Selection.skipped``), so fewer than ``budget`` may come back. For strategies: ``pool``
    is a checked ``PoolView`` and ``scores`` one float64 per item.
    """
    if pool.min_distance > 0:
        picked = greedy_rows(
            pool.embeddings_for("near-duplicate suppression"),
            budget,
            scores,
            weight=0.0,
            reference=pool.reference_embeddings,
            min_distance=pool.min_distance,
        )
        return Selection(indices=picked.indices, scores=scores[picked.indices], skipped=picked.skipped)
    indices = top_k(scores, budget)
    return Selection(indices=indices, scores=scores[indices])
