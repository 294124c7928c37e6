"""Boundary checks shared by the public functions of ``strategies`` (internal).

Each public function (and ``PoolView``, the input of every strategy) calls these once and hands clean arrays to
internal helpers that assume valid input. Names, budgets, pool states and embeddings are each checked here and
nowhere else.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
from collections.abc import Collection
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies.errors import (
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    UnknownStrategyError,
)

# A unit row's squared norm, computed in float32 over a few thousand dimensions, is 1 within ~1e-5; anything
# further off was not normalised (a raw model embedding, a rescaled row).
_UNIT_TOLERANCE = 1e-3
_NORM_BLOCK_ROWS = 8192  # rows per normalisation step: bounds the temporary to a few MB


def is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """True for Python and numpy integers, False for bools (``True`` as a budget is a bug, not 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def canonical_name(name: str) -> str:
    """The registered spelling of a name (strategy, measure, reducer): ``least-confidence`` → ``least_confidence``."""
    return name.replace("-", "_")


def check_name(name: object, valid: Collection[str], kind: str) -> str:
    """``name`` in its registered spelling, or UnknownStrategyError listing ``valid`` (the one place names are
    normalised)."""
    if isinstance(name, str):
        key = canonical_name(name)
        if key in valid:
            return key
    raise UnknownStrategyError(name, valid, kind=kind)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_option(value: object, annotation: Any, what: str) -> Any:
    """``value`` as the type ``annotation`` declares (a parameter annotation of a strategy's factory), or
    InvalidOptionError "``what``: expected a number, got 'abc'".

    Understood: ``float``, ``int``, ``bool``, ``str``, ``Literal[...]``, unions (``X | None``) and classes
    (isinstance). Text that spells a number or a bool is converted (environment variables carry only text);
    ``True`` is not a number, and numbers must be finite. Anything else (``Any``, no annotation) passes as is.
    """
    try:
        return _coerce(value, annotation)
    except _Mismatch as exc:
        raise InvalidOptionError(f"{what}: expected {exc.expected}, got {value!r}") from None


class _Mismatch(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _coerce(value: object, annotation: Any) -> Any:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value in choices and not isinstance(value, bool):
            return value
        raise _Mismatch("one of " + ", ".join(repr(c) for c in choices))
    if origin is Union or origin is types.UnionType:
        members = get_args(annotation)
        if value is None and type(None) in members:
            return None
        expected = []
        for member in (m for m in members if m is not type(None)):
            try:
                return _coerce(value, member)
            except _Mismatch as exc:
                expected.append(exc.expected)
        raise _Mismatch(" or ".join(expected + (["null"] if type(None) in members else [])))
    if annotation is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch("true or false")
    if annotation is int:
        if is_int(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch("an integer")
    if annotation is float:
        number: float | None = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise _Mismatch("a finite number" if number is not None else "a number")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch(f"a {annotation.__name__}")
    return value  # a construct this checker does not model (generics, protocols): the factory checks it


def check_budget(budget: object) -> int:
    if not is_int(budget) or int(budget) < 1:
        raise InvalidBudgetError(budget)
    return int(budget)


def check_available(available: int, total: int, budget: int) -> None:
    """The pool-state guard: raise EmptyPoolError (nothing of ``total`` available) or PoolExhaustedError."""
    if available == 0:
        raise EmptyPoolError(total)
    if budget > available:
        raise PoolExhaustedError(available, budget)


def check_min_distance(value: float) -> float:
    """A near-duplicate threshold: a cosine distance in [0, 2] (0 turns suppression off)."""
    if not 0.0 <= float(value) <= 2.0:
        raise InvalidOptionError(f"min_distance must be a cosine distance in [0, 2], got {value}")
    return float(value)


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


def uncertainty_vector(values: ArrayLike, what: str = "uncertainty") -> NDArray[np.float64]:
    """Per-item uncertainty as float64: each value >= 0 and finite, or NaN (the item is excluded)."""
    u = real_array(values, what, ndim=1).astype(np.float64, copy=False)
    bad = np.isinf(u) | (u < 0)  # NaN compares False: it stays allowed
    if bad.any():
        item = int(np.flatnonzero(bad)[0])
        raise InvalidScoresError(
            f"{what} of item {item} is {u[item]}: expected a finite score >= 0 (higher = more uncertain), "
            "or NaN to exclude the item"
        )
    return u


def unit_rows(values: ArrayLike, what: str = "embeddings") -> NDArray[np.float32]:
    """``values`` as C-contiguous float32 rows of unit length, the form every cosine distance here assumes.

    Rows of another length are rescaled (into a copy: the caller's array is never modified); all-zero rows have
    no direction and stay zero. Already-unit float32 input is returned as is, after one pass that computes the
    row norms (which also finds NaN and infinity). Raises InvalidScoresError for a wrong shape or dtype, or a
    non-finite value (naming the row).
    """
    arr = real_array(values, what, ndim=2)
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if x.size == 0:
        return x
    squared = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), _NORM_BLOCK_ROWS):
        block = x[start : start + _NORM_BLOCK_ROWS]
        np.einsum("ij,ij->i", block, block, out=squared[start : start + len(block)])
    norms = squared.astype(np.float64)
    # float32 squares overflow above ~1e19 and underflow below ~1e-19: those rows are measured (and later
    # rescaled) in float64, which also tells a real NaN/inf from an overflow.
    odd = np.flatnonzero(~np.isfinite(squared) | (squared == 0))
    odd_rows = x[odd].astype(np.float64)
    if len(odd):
        if not np.isfinite(odd_rows).all():
            row = int(odd[np.flatnonzero(~np.isfinite(odd_rows).all(axis=1))[0]])
            raise InvalidScoresError(f"{what} row {row} has a non-finite value (NaN or infinity)")
        scale = np.abs(odd_rows).max(axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        scaled = odd_rows / scale
        norms[odd] = np.einsum("ij,ij->i", scaled, scaled) * scale[:, 0] ** 2
    if np.all((np.abs(norms - 1.0) <= _UNIT_TOLERANCE) | (norms == 0)):
        return x
    out = x.copy() if np.may_share_memory(x, arr) else x  # never rescale the caller's array
    lengths = np.sqrt(norms)
    lengths[lengths == 0] = 1.0
    lengths32 = lengths.astype(np.float32)
    for start in range(0, len(out), _NORM_BLOCK_ROWS):
        block = out[start : start + _NORM_BLOCK_ROWS]
        block /= lengths32[start : start + len(block), None]
    if len(odd):
        out[odd] = (odd_rows / lengths[odd, None]).astype(np.float32)
    return out
