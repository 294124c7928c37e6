"""Boundary checks shared by the public functions of ``strategies`` (internal).

Each public function calls these once and hands a clean array to internal helpers that assume valid input.
"""

from __future__ import annotations

import numbers
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies.errors import InvalidBudgetError, InvalidOptionError, InvalidScoresError


def is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """True for Python and numpy integers, False for bools (``True`` as a budget is a bug, not 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_budget(budget: object) -> int:
    if not is_int(budget) or int(budget) < 1:
        raise InvalidBudgetError(budget)
    return int(budget)


def check_count(value: object, what: str) -> int:
    """A non-negative integer argument such as a pool size."""
    if not is_int(value) or int(value) < 0:
        raise InvalidOptionError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def real_array(values: ArrayLike, what: str, ndim: int) -> NDArray[np.number]:
    """``values`` as a real numeric array with ``ndim`` dimensions (no copy when it already is one)."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidScoresError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise InvalidScoresError(f"{what} must be a {ndim}-D array, got shape {arr.shape}")
    return arr


def first_bad(arr: NDArray[np.number], unit: str, upper: float | None = None) -> None:
    """Raise naming the first row (``unit`` i) with a non-finite, negative or above-``upper`` value.

    Uses ``min``/``max`` (no temporary arrays) on the happy path; locating the culprit is paid only on error.
    """
    if arr.size == 0:
        return
    low, high = arr.min(), arr.max()
    rows = arr.reshape(arr.shape[0], -1)
    if not (np.isfinite(low) and np.isfinite(high)):
        row = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        value = rows[row][~np.isfinite(rows[row])][0]
        raise InvalidScoresError(f"{unit} {row} has a non-finite value ({value})")
    if low < 0:
        row = int(np.flatnonzero((rows < 0).any(axis=1))[0])
        value = rows[row][rows[row] < 0][0]
        raise InvalidScoresError(f"{unit} {row} has a negative value ({value})")
    if upper is not None and high > upper:
        row = int(np.flatnonzero((rows > upper).any(axis=1))[0])
        value = rows[row][rows[row] > upper][0]
        raise InvalidScoresError(f"{unit} {row} has a value above 1 ({value}); expected scores in [0, 1]")
