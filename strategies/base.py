"""The one interface every strategy implements, and the data it consumes and returns.

A strategy sees a ``PoolView`` (aligned per-item arrays, nothing else: no ids, no database) and returns a
``Selection`` of positions in that view. The orchestrator maps positions back to item ids, so it never needs
to know which strategy ran; what it must prepare is described by two attributes, ``measure`` (which
uncertainty measure to compute into ``PoolView.uncertainty``, or None) and ``needs_embeddings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from strategies._validate import is_int
from strategies.errors import InvalidOptionError, InvalidScoresError

__all__ = ["PoolView", "Selection", "Strategy"]


@dataclass(frozen=True, eq=False)
class PoolView:
    """The candidates of one selection, as aligned arrays (row i of each is the same item).

    Attributes:
        uncertainty: (N,) per-item uncertainty, already aggregated; higher = more uncertain; NaN = excluded,
            never selected by any strategy.
        embeddings: (N, D) float32 item embeddings, for diversity strategies.
        reference_embeddings: (M, D) float32 embeddings of items already labeled or queued: diversity
            strategies avoid what is near them.
        seed: seeds every random choice, so a selection is reproducible.
        size: N, needed only when neither ``uncertainty`` nor ``embeddings`` is given.
        min_distance: near-duplicate threshold (cosine distance): an item closer than this to a selected or
            reference item is never selected. 0 disables it; > 0 needs ``embeddings``.
        classes: (N, C) boolean, the classes each item is predicted to contain (for class balancing).

    Arrays are not copied; do not modify them while the view is in use.
    """

    uncertainty: NDArray[np.float64] | None = None
    embeddings: NDArray[np.float32] | None = None
    reference_embeddings: NDArray[np.float32] | None = None
    seed: int = 0
    size: int | None = None
    min_distance: float = 0.0
    classes: NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        lengths: dict[str, int] = {}
        if self.size is not None:
            if not is_int(self.size) or self.size < 0:
                raise InvalidOptionError(f"PoolView.size must be an integer >= 0, got {self.size!r}")
            lengths["size"] = int(self.size)
        if self.uncertainty is not None:
            if np.ndim(self.uncertainty) != 1:
                raise InvalidScoresError(f"uncertainty must be 1-D, got shape {np.shape(self.uncertainty)}")
            lengths["uncertainty"] = len(self.uncertainty)
        for field_name in ("embeddings", "reference_embeddings"):
            value = getattr(self, field_name)
            if value is not None and np.ndim(value) != 2:
                raise InvalidScoresError(f"{field_name} must be 2-D, got shape {np.shape(value)}")
        if self.embeddings is not None:
            lengths["embeddings"] = len(self.embeddings)
            if self.reference_embeddings is not None and (
                np.shape(self.reference_embeddings)[1] != np.shape(self.embeddings)[1]
            ):
                raise InvalidScoresError(
                    f"reference_embeddings have dimension {np.shape(self.reference_embeddings)[1]} "
                    f"but embeddings have {np.shape(self.embeddings)[1]}"
                )
        if not lengths:
            raise InvalidOptionError("PoolView needs uncertainty, embeddings or size to know how many items")
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
            raise InvalidScoresError(f"PoolView arrays disagree on the number of items: {detail}")
        if not is_int(self.seed) or self.seed < 0:
            raise InvalidOptionError(f"PoolView.seed must be an integer >= 0, got {self.seed!r}")
        if not 0.0 <= float(self.min_distance) <= 2.0:
            raise InvalidOptionError(f"min_distance must be a cosine distance in [0, 2], got {self.min_distance}")
        if self.min_distance > 0 and self.embeddings is None:
            raise InvalidOptionError("near-duplicate suppression (min_distance > 0) needs embeddings")
        if self.classes is not None and (np.ndim(self.classes) != 2 or len(self.classes) != len(self)):
            raise InvalidScoresError(f"classes must be (items x classes), got shape {np.shape(self.classes)}")

    def __len__(self) -> int:
        if self.size is not None:
            return int(self.size)
        if self.uncertainty is not None:
            return len(self.uncertainty)
        return len(self.embeddings) if self.embeddings is not None else 0


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
    whether ``PoolView.embeddings`` must be filled.
    """

    @property
    def name(self) -> str: ...

    @property
    def measure(self) -> str | None: ...

    @property
    def needs_embeddings(self) -> bool: ...

    def select(self, pool: PoolView, budget: int) -> Selection:
        """Pick ``budget`` items; raises InvalidBudgetError, EmptyPoolError or PoolExhaustedError."""
        ...
