"""The one interface every strategy implements, the data it consumes and returns, and the template they share.

A strategy sees a ``PoolView`` (aligned per-item arrays, nothing else: no ids, no database) and returns a
``Selection`` of positions in that view. The orchestrator maps positions back to item ids, so it never needs
to know which strategy ran; what it must prepare is described by two attributes, ``measure`` (which
uncertainty measure to compute into ``PoolView.uncertainty``, or None) and ``needs_embeddings``.

Validation happens at two doors, once each: ``PoolView`` checks and normalises the arrays (shapes, NaN/inf,
unit-length embeddings), and ``StrategyBase.select`` checks the budget, what the strategy reads and the pool
state before handing over to the strategy's own rule, ``_select``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from strategies._validate import (
    check_available,
    check_budget,
    check_min_distance,
    first_bad,
    is_int,
    real_array,
    uncertainty_vector,
    unit_rows,
)
from strategies.errors import InvalidOptionError, InvalidScoresError

__all__ = ["PoolView", "Selection", "Strategy", "StrategyBase"]


@dataclass(frozen=True, eq=False)
class PoolView:
    """The candidates of one selection, as aligned arrays (row i of each is the same item).

    Attributes:
        uncertainty: (N,) per-item uncertainty, already aggregated; higher = more uncertain, finite and >= 0;
            NaN = excluded, never selected by any strategy. Stored as float64.
        embeddings: (N, D) item embeddings, for diversity strategies. Every distance here is a cosine
            distance, so rows are stored unit-length float32: rows of another length are rescaled (a copy; a
            row's scale never changes a selection), all-zero rows stay zero. NaN/inf is rejected.
        reference_embeddings: (M, D) embeddings of items already labeled or queued, normalised the same way:
            diversity strategies avoid what is near them.
        seed: seeds every random choice, so a selection is reproducible.
        size: N, needed only when neither ``uncertainty`` nor ``embeddings`` is given.
        min_distance: near-duplicate threshold (cosine distance): an item closer than this to a selected or
            reference item is never selected. 0 disables it; > 0 needs ``embeddings``.
        classes: (N, C) boolean, the classes each item is predicted to contain (for class balancing).
        probs: (N, C) the model's class probabilities (classification), for strategies that read the whole
            distribution (BADGE's gradient embeddings); values in [0, 1], stored as float32.

    Arrays already in the stored form are not copied; do not modify them while the view is in use.
    """

    uncertainty: NDArray[np.float64] | None = None
    embeddings: NDArray[np.float32] | None = None
    reference_embeddings: NDArray[np.float32] | None = None
    seed: int = 0
    size: int | None = None
    min_distance: float = 0.0
    classes: NDArray[np.bool_] | None = None
    probs: NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        lengths: dict[str, int] = {}
        if self.size is not None:
            if not is_int(self.size) or self.size < 0:
                raise InvalidOptionError(f"PoolView.size must be an integer >= 0, got {self.size!r}")
            lengths["size"] = int(self.size)
        if self.uncertainty is not None:
            object.__setattr__(self, "uncertainty", uncertainty_vector(self.uncertainty))
            lengths["uncertainty"] = len(self.uncertainty)
        for field_name in ("embeddings", "reference_embeddings"):
            value = getattr(self, field_name)
            if value is not None:
                if np.ndim(value) != 2:
                    raise InvalidScoresError(f"{field_name} must be 2-D, got shape {np.shape(value)}")
                object.__setattr__(self, field_name, unit_rows(value, field_name))
        if self.embeddings is not None:
            lengths["embeddings"] = len(self.embeddings)
            if self.reference_embeddings is not None and (
                self.reference_embeddings.shape[1] != self.embeddings.shape[1]
            ):
                raise InvalidScoresError(
                    f"reference_embeddings have dimension {self.reference_embeddings.shape[1]} "
                    f"but embeddings have {self.embeddings.shape[1]}"
                )
        if not lengths:
            raise InvalidOptionError("PoolView needs uncertainty, embeddings or size to know how many items")
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
            raise InvalidScoresError(f"PoolView arrays disagree on the number of items: {detail}")
        if not is_int(self.seed) or self.seed < 0:
            raise InvalidOptionError(f"PoolView.seed must be an integer >= 0, got {self.seed!r}")
        check_min_distance(self.min_distance)
        if self.min_distance > 0 and self.embeddings is None:
            raise InvalidOptionError("near-duplicate suppression (min_distance > 0) needs embeddings")
        if self.classes is not None and (np.ndim(self.classes) != 2 or len(self.classes) != len(self)):
            raise InvalidScoresError(f"classes must be (items x classes), got shape {np.shape(self.classes)}")
        if self.probs is not None:
            probs = real_array(self.probs, "probs", ndim=2)
            if len(probs) != len(self):
                raise InvalidScoresError(f"probs has {len(probs)} rows but the pool has {len(self)} items")
            probs = np.ascontiguousarray(probs, dtype=np.float32)
            first_bad(probs, "probs row", upper=1.0 + 1e-6)
            object.__setattr__(self, "probs", probs)

    def __len__(self) -> int:
        if self.size is not None:
            return int(self.size)
        if self.uncertainty is not None:
            return len(self.uncertainty)
        return len(self.embeddings) if self.embeddings is not None else 0

    @cached_property
    def usable(self) -> NDArray[np.bool_]:
        """(N,) True for the items a strategy may select: all of them, less those with NaN uncertainty."""
        if self.uncertainty is None:
            return np.ones(len(self), dtype=bool)
        return ~np.isnan(self.uncertainty)

    @cached_property
    def available(self) -> int:
        """How many items may be selected."""
        return int(np.count_nonzero(self.usable))

    def embeddings_for(self, strategy: str) -> NDArray[np.float32]:
        """The embeddings, or the error that says ``strategy`` needs them."""
        if self.embeddings is None:
            raise InvalidOptionError(f"strategy {strategy!r} needs embeddings in the PoolView")
        return self.embeddings

    def probs_for(self, strategy: str) -> NDArray[np.float32]:
        """The class probabilities, or the error that says ``strategy`` needs them."""
        if self.probs is None:
            raise InvalidOptionError(
                f"strategy {strategy!r} needs the model's class probabilities (PoolView.probs): a classification "
                "model's outputs"
            )
        return self.probs

    def uncertainty_for(self, strategy: str, measure: str | None) -> NDArray[np.float64]:
        """The uncertainty, or the error that says ``strategy`` ranks by the ``measure`` measure."""
        if self.uncertainty is None:
            raise InvalidOptionError(
                f"strategy {strategy!r} ranks by uncertainty: fill PoolView.uncertainty with the "
                f"{measure!r} measure first"
            )
        return self.uncertainty


@dataclass(frozen=True, eq=False)
class Selection:
    """What a strategy picked, in rank order (best first).

    Attributes:
        indices: (k,) positions in the ``PoolView``, distinct.
        scores: (k,) the ranking score of each selected item (its uncertainty; for random, the random draw).
        clusters: (k,) cluster id of each selected item, for strategies that cluster; None otherwise.
        skipped: near-duplicates passed over (they would have ranked in; a selected or reference item is closer
            than ``PoolView.min_distance``).
    """

    indices: NDArray[np.int64]
    scores: NDArray[np.float64]
    clusters: NDArray[np.int64] | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.indices) or (
            self.clusters is not None and len(self.clusters) != len(self.indices)
        ):
            raise InvalidScoresError("Selection arrays must have one entry per selected index")

    def __len__(self) -> int:
        return len(self.indices)


@runtime_checkable
class Strategy(Protocol):
    """Selects ``budget`` items from a pool. Implementations are immutable and hold no pool state.

    ``name`` is the registry name; ``measure`` is the uncertainty measure the orchestrator must compute into
    ``PoolView.uncertainty`` (None: the strategy does not rank by uncertainty); ``needs_embeddings`` says
    whether ``PoolView.embeddings`` must be filled, ``needs_probs`` whether ``PoolView.probs`` must be.
    """

    @property
    def name(self) -> str: ...

    @property
    def measure(self) -> str | None: ...

    @property
    def needs_embeddings(self) -> bool: ...

    @property
    def needs_probs(self) -> bool: ...

    def select(self, pool: PoolView, budget: int) -> Selection:
        """Pick ``budget`` items; raises InvalidBudgetError, EmptyPoolError or PoolExhaustedError."""
        ...


class StrategyBase(ABC):
    """The template of every built-in strategy: ``select`` validates, ``_select`` is the strategy's own rule.

    ``select`` checks, in this order and once: the budget (an integer >= 1), that the pool carries what the
    strategy reads (``needs_embeddings``, ``needs_uncertainty``, ``needs_probs``), and the pool state
    (EmptyPoolError when no item is usable, PoolExhaustedError when the budget exceeds them). ``_select`` may
    then assume ``1 <= budget <= pool.available``. Concrete strategies are frozen dataclasses that set the
    attributes below.
    """

    name: str
    measure: str | None
    needs_embeddings: bool
    needs_uncertainty: bool = False
    needs_probs: bool = False

    def select(self, pool: PoolView, budget: int) -> Selection:
        """Pick ``budget`` items of ``pool``, best first.

        Raises:
            InvalidBudgetError: ``budget`` is not an integer >= 1.
            InvalidOptionError: the pool lacks the embeddings or uncertainty this strategy reads.
            EmptyPoolError: no item is usable (the pool is empty, or every item is excluded).
            PoolExhaustedError: fewer usable items than ``budget``.
        """
        budget = check_budget(budget)
        if self.needs_embeddings:
            pool.embeddings_for(self.name)
        if self.needs_uncertainty:
            pool.uncertainty_for(self.name, self.measure)
        if self.needs_probs:
            pool.probs_for(self.name)
        check_available(pool.available, len(pool), budget)
        return self._select(pool, budget)

    @abstractmethod
    def _select(self, pool: PoolView, budget: int) -> Selection:
        """The strategy's rule, on a validated pool with ``1 <= budget <= pool.available``."""
