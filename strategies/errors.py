"""Typed errors raised by ``strategies``.

Everything here is a ``ValueError``: a strategy fails only because of what it was given (a name, a budget,
an array, a pool state). ``strategies`` must not import ``curation``, so the orchestrator maps these onto its
own ``CurateError`` classes (``EmptyPoolError`` and ``PoolExhaustedError`` mean "nothing (more) to select";
the others are configuration or model-output problems). Each message names what is wrong, so the CLI can
print it as is.
"""

from __future__ import annotations

from collections.abc import Iterable


class StrategyError(ValueError):
    """Base class of every error raised by ``strategies``."""


class UnknownStrategyError(StrategyError):
    """A name (strategy, uncertainty measure, reducer) is not registered; the message lists the valid ones."""

    def __init__(self, name: object, valid: Iterable[str], kind: str = "strategy") -> None:
        self.name = name
        self.valid: tuple[str, ...] = tuple(sorted(valid))
        self.kind = kind
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")

    def __reduce__(self) -> tuple[type[UnknownStrategyError], tuple[object, tuple[str, ...], str]]:
        # Custom __init__ arguments: tell pickle how to rebuild us (errors cross process boundaries).
        return (type(self), (self.name, self.valid, self.kind))


class EmptyPoolError(StrategyError):
    """No item is available: the pool is empty, or every item is excluded (NaN score or masked out)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        detail = f" (all {total} items are excluded)" if total else ""
        super().__init__(f"the pool is empty: nothing to select{detail}")

    def __reduce__(self) -> tuple[type[EmptyPoolError], tuple[int]]:
        return (type(self), (self.total,))


class PoolExhaustedError(StrategyError):
    """The budget asks for more items than are available."""

    def __init__(self, available: int, requested: int) -> None:
        self.available = available
        self.requested = requested
        super().__init__(f"pool exhausted: {available} available / {requested} requested")

    def __reduce__(self) -> tuple[type[PoolExhaustedError], tuple[int, int]]:
        return (type(self), (self.available, self.requested))


class InvalidScoresError(StrategyError):
    """An input array has the wrong shape or dtype, or a non-finite, negative or out-of-range value."""


class InvalidBudgetError(StrategyError):
    """The budget is not an integer >= 1."""

    def __init__(self, budget: object) -> None:
        self.budget = budget
        super().__init__(f"budget must be an integer >= 1, got {budget!r}")

    def __reduce__(self) -> tuple[type[InvalidBudgetError], tuple[object]]:
        return (type(self), (self.budget,))


class InvalidOptionError(StrategyError):
    """An option or argument (of a strategy, reducer or score function) is unknown or has an invalid value.

    ``option``: the offending option's name when one option is to blame (a config loader uses it to name the
    key); None otherwise.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        self.option = option
        super().__init__(message)

    def __reduce__(self) -> tuple[type[InvalidOptionError], tuple[str, str | None]]:
        return (type(self), (str(self), self.option))
