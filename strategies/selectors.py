"""Selectors: turn one score per item into the indices of the items to label.

Tie-breaking is part of the contract, not an accident of the sort: among equal scores the LOWER index wins.
With a pool listed in a stable order (by item id, say) the same scores always give the same selection.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies._validate import check_budget, real_array
from strategies.errors import EmptyPoolError, InvalidScoresError, PoolExhaustedError

__all__ = ["top_k"]


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
    if positions.shape[0] == 0:
        raise EmptyPoolError(total=values.shape[0])
    if budget > positions.shape[0]:
        raise PoolExhaustedError(available=int(positions.shape[0]), requested=budget)
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
