"""Class balance as a wrapper around any strategy: per-class quotas so that rare classes are not starved.

The wrapped strategy ranks ``oversample`` × budget items; they are taken in rank order while each item's class has
quota left (an item counts for the rarest of the classes it is predicted to contain — for detection, the classes
of its boxes). Classes still under quota are then filled from the whole pool, most uncertain first, and any budget
left over goes to the remaining ranked items. Quota = ceil(budget / number of classes present in the pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection, Strategy, StrategyBase
from strategies.errors import InvalidOptionError
from strategies.index import make_index

__all__ = ["NO_CLASS", "ClassBalanced"]

NO_CLASS = -1  # items predicted to contain nothing (an empty detection) form a group of their own


@dataclass(frozen=True)
class ClassBalanced(StrategyBase):
    """Wraps ``base`` (any strategy) with per-class quotas; see the module docstring. ``oversample`` (>= 1) is
    how many times the budget ``base`` ranks. Name, measure and needs are the base's (``<name>+balance``)."""

    base: Strategy
    oversample: float = 3.0
    name: str = field(init=False)
    measure: str | None = field(init=False)
    needs_embeddings: bool = field(init=False)
    needs_probs: bool = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base, Strategy):
            raise InvalidOptionError(f"class balance wraps a strategy, got {self.base!r}")
        if not self.oversample >= 1:
            raise InvalidOptionError(f"class balance option 'oversample' must be >= 1, got {self.oversample}")
        object.__setattr__(self, "name", f"{self.base.name}+balance")
        object.__setattr__(self, "measure", self.base.measure)
        object.__setattr__(self, "needs_embeddings", self.base.needs_embeddings)
        object.__setattr__(self, "needs_probs", self.base.needs_probs)

    def _select(self, pool: PoolView, budget: int) -> Selection:
        if pool.classes is None:
            raise InvalidOptionError("class balance needs the predicted classes of each item (PoolView.classes)")
        classes = np.asarray(pool.classes, dtype=bool)
        usable = pool.usable
        ranked = self.base.select(pool, min(pool.available, int(np.ceil(self.oversample * budget))))
        present = [int(c) for c in np.flatnonzero(classes[usable].any(axis=0))]
        if (~classes[usable].any(axis=1)).any():
            present.insert(0, NO_CLASS)
        quota = int(np.ceil(budget / max(1, len(present))))
        counts = dict.fromkeys(present, 0)
        taken: list[int] = []
        scores: list[float] = []
        chosen = set()

        for i, s in zip(ranked.indices.tolist(), ranked.scores.tolist(), strict=True):
            if len(taken) >= budget:
                break
            open_groups = [g for g in _groups(classes, i) if counts[g] < quota]
            if open_groups:  # the item's classes still have quota: take it for the least-filled one
                counts[min(open_groups, key=lambda g: (counts[g], g))] += 1
                taken.append(int(i))
                scores.append(float(s))
                chosen.add(int(i))
        fills = _quota_fill(pool, classes, counts, quota, chosen, budget - len(taken))
        for i, s in fills:
            taken.append(i)
            scores.append(s)
            chosen.add(i)
        for i, s in zip(ranked.indices.tolist(), ranked.scores.tolist(), strict=True):
            if len(taken) >= budget:
                break
            if int(i) not in chosen:
                taken.append(int(i))
                scores.append(float(s))
                chosen.add(int(i))
        clusters = None
        if ranked.clusters is not None:
            by_index = dict(zip(ranked.indices.tolist(), ranked.clusters.tolist(), strict=True))
            clusters = np.array([by_index.get(i, -1) for i in taken], dtype=np.int64)
        return Selection(
            indices=np.asarray(taken, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float64),
            clusters=clusters,
            skipped=ranked.skipped,
        )


def _groups(classes: NDArray[np.bool_], i: int) -> tuple[int, ...]:
    """The classes item ``i`` counts for (NO_CLASS when it is predicted to contain none)."""
    return tuple(np.flatnonzero(classes[i]).tolist()) or (NO_CLASS,)


def _quota_fill(
    pool: PoolView,
    classes: NDArray[np.bool_],
    counts: dict[int, int],
    quota: int,
    chosen: set[int],
    room: int,
) -> list[tuple[int, float]]:
    """Items of under-quota classes from the whole pool, most uncertain first, skipping near-duplicates."""
    if room <= 0:
        return []
    u = np.zeros(len(pool)) if pool.uncertainty is None else np.nan_to_num(pool.uncertainty, nan=-1.0)
    # Only usable items with a class still under quota can be taken (quotas only fill up as the loop runs), so
    # the loop below visits those alone instead of the whole pool.
    under = [g for g, n in counts.items() if n < quota and g != NO_CLASS]
    wanted = classes[:, under].any(axis=1)
    if counts.get(NO_CLASS, quota) < quota:
        wanted |= ~classes.any(axis=1)
    wanted &= pool.usable
    if chosen:
        wanted[sorted(chosen)] = False
    order = np.flatnonzero(wanted)
    order = order[np.lexsort((order, -u[order]))]
    out: list[tuple[int, float]] = []
    # One index of everything that covers (reference set and chosen items), grown as items are taken: each
    # candidate costs one nearest-neighbour query instead of rebuilding the cover.
    cover = None
    if pool.min_distance > 0 and pool.embeddings is not None:
        cover = make_index(pool.embeddings.shape[1])
        if pool.reference_embeddings is not None and len(pool.reference_embeddings):
            cover.add(pool.reference_embeddings)
        if chosen:
            cover.add(pool.embeddings[sorted(chosen)])
    for i in order.tolist():
        if len(out) >= room:
            break
        open_groups = [g for g in _groups(classes, i) if counts[g] < quota]
        if not open_groups:
            continue
        if cover is not None and pool.embeddings is not None:
            vector = pool.embeddings[i : i + 1]
            if cover.ntotal and float(cover.nearest(vector, 1)[0][0, 0]) < pool.min_distance:
                continue
            cover.add(vector)
        counts[min(open_groups, key=lambda g: (counts[g], g))] += 1
        out.append((i, float(u[i])))
    return out
