"""Class balance as a wrapper around any strategy: per-class quotas so that rare classes are not starved.

The wrapped strategy ranks ``oversample`` × budget items; they are taken in rank order while each item's class has
quota left (an item counts for the rarest of the classes it is predicted to contain — for detection, the classes
of its boxes). Classes still under quota are then filled from the whole pool, most uncertain first, and any budget
left over goes to the remaining ranked items. Quota = ceil(budget / number of classes present in the pool).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies._validate import check_budget
from strategies.base import PoolView, Selection, Strategy
from strategies.errors import EmptyPoolError, InvalidOptionError, PoolExhaustedError
from strategies.index import make_index

NO_CLASS = -1  # items predicted to contain nothing (an empty detection) form a group of their own


@dataclass(frozen=True)
class ClassBalanced:
    base: Strategy
    oversample: float = 3.0

    @property
    def name(self) -> str:
        return f"{self.base.name}+balance"

    @property
    def measure(self) -> str | None:
        return self.base.measure

    @property
    def needs_embeddings(self) -> bool:
        return self.base.needs_embeddings

    def select(self, pool: PoolView, budget: int) -> Selection:
        budget = check_budget(budget)
        if pool.classes is None:
            raise InvalidOptionError("class balance needs the predicted classes of each item (PoolView.classes)")
        classes = np.asarray(pool.classes, dtype=bool)
        usable = np.ones(len(pool), dtype=bool) if pool.uncertainty is None else ~np.isnan(pool.uncertainty)
        n_usable = int(usable.sum())
        if n_usable == 0:
            raise EmptyPoolError(len(pool))
        if budget > n_usable:
            raise PoolExhaustedError(n_usable, budget)
        ranked = self.base.select(pool, min(n_usable, int(np.ceil(self.oversample * budget))))
        groups = _groups(classes)
        present = sorted({g for i in np.flatnonzero(usable) for g in groups[i]})
        quota = int(np.ceil(budget / max(1, len(present))))
        counts = dict.fromkeys(present, 0)
        taken: list[int] = []
        scores: list[float] = []
        chosen = set()

        for i, s in zip(ranked.indices.tolist(), ranked.scores.tolist(), strict=True):
            if len(taken) >= budget:
                break
            open_groups = [g for g in groups[int(i)] if counts[g] < quota]
            if open_groups:  # the item's classes still have quota: take it for the least-filled one
                counts[min(open_groups, key=lambda g: (counts[g], g))] += 1
                taken.append(int(i))
                scores.append(float(s))
                chosen.add(int(i))
        fills = _quota_fill(pool, groups, usable, counts, quota, chosen, budget - len(taken))
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


def _groups(classes: NDArray[np.bool_]) -> list[tuple[int, ...]]:
    return [tuple(np.flatnonzero(row).tolist()) or (NO_CLASS,) for row in classes]


def _quota_fill(
    pool: PoolView,
    groups: list[tuple[int, ...]],
    usable: NDArray[np.bool_],
    counts: dict[int, int],
    quota: int,
    chosen: set[int],
    room: int,
) -> list[tuple[int, float]]:
    """Items of under-quota classes from the whole pool, most uncertain first, skipping near-duplicates."""
    if room <= 0:
        return []
    u = np.zeros(len(pool)) if pool.uncertainty is None else np.nan_to_num(np.asarray(pool.uncertainty), nan=-1.0)
    order = np.lexsort((np.arange(len(pool)), -u))
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
        if not usable[i] or i in chosen:
            continue
        open_groups = [g for g in groups[i] if counts.get(g, quota) < quota]
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
