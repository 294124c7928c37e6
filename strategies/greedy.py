"""Greedy selection over embeddings: k-center, uncertainty × diversity, and near-duplicate exclusion.

All of it is one exact greedy procedure (``kcenter``, ``hybrid`` and the near-duplicate path of ``rank_by`` call
``greedy_rows`` on a checked ``PoolView``; ``greedy_select`` is the public, validating entry). Each step picks the
candidate with the largest key

    key_i = priority_i^(1 - w) · d_i^w

where ``d_i`` is the cosine distance from item i to its nearest *center* (already-selected items and the
reference set: labeled and queued items) and ``priority_i`` is its uncertainty. ``w = 1`` is k-center greedy
(the core-set heuristic of Sener & Savarese, 2018: repeatedly take the point farthest from everything covered);
``w = 0`` is plain uncertainty ranking; in between, an uncertain item counts for less the closer it is to what is
already covered. Candidates closer than ``min_distance`` to a center are near-duplicates and are never picked.

**Exact and fast: lazy evaluation over blocks.** ``d_i`` only ever decreases as centers are added, so a stale
``d_i`` is an upper bound and so is the stale maximum key of a block of rows. The loop takes the block with the
largest (possibly stale) key; if the block is stale, it is brought up to date against all the centers it missed
in *one* matrix product (compute-bound, not one pass over memory per center); if it is fresh, its best row is the
exact argmax (every other block's key is an upper bound) and is selected. Blocks far from the new centers are
never touched again, which is where the time goes to on clustered, real-world embeddings. Ties go to the lower
row index, as in a brute-force implementation (tests compare against one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies._validate import check_available, check_budget, check_min_distance, unit_rows
from strategies.errors import InvalidOptionError, InvalidScoresError
from strategies.index import make_index, min_cosine_distance

__all__ = ["BLOCK_ROWS", "MAX_DISTANCE", "GreedyResult", "greedy_rows", "greedy_select"]

MAX_DISTANCE = 2.0  # cosine distance between opposite unit vectors: "nothing covers this item yet"
BLOCK_ROWS = 4096


@dataclass(frozen=True)
class GreedyResult:
    indices: NDArray[np.int64]  # picked rows, in pick order
    keys: NDArray[np.float64]  # each pick's key when it was picked (non-increasing for k-center)
    distances: NDArray[np.float32]  # each pick's distance to the nearest center when it was picked
    skipped: int  # near-duplicates that reached the top and were passed over


def greedy_select(
    embeddings: NDArray[np.float32],
    budget: int,
    *,
    priority: NDArray[np.float64] | None = None,
    weight: float = 1.0,
    reference: NDArray[np.float32] | None = None,
    min_distance: float = 0.0,
    block_rows: int = BLOCK_ROWS,
) -> GreedyResult:
    """Pick up to ``budget`` rows greedily by ``priority^(1-weight) * distance^weight`` (see module docstring).

    ``priority`` NaN marks rows that may never be picked. Fewer than ``budget`` rows come back only when every
    remaining candidate is a near-duplicate (closer than ``min_distance`` to a center). Rows of ``embeddings``
    and ``reference`` are rescaled to unit length first (a copy, only when they are not): the distances are
    cosine distances, so a row's scale never changes the picks.

    Raises:
        InvalidBudgetError, EmptyPoolError, PoolExhaustedError: as every strategy.
        InvalidScoresError: a wrong shape, NaN/inf in the embeddings, or a negative priority.
        InvalidOptionError: ``weight`` outside [0, 1] or ``min_distance`` outside [0, 2].
    """
    x = unit_rows(embeddings)
    budget = check_budget(budget)
    if not 0.0 <= weight <= 1.0:
        raise InvalidOptionError(f"diversity weight must be in [0, 1], got {weight}")
    min_distance = check_min_distance(min_distance)
    n = len(x)
    prio = np.ones(n) if priority is None else np.asarray(priority, dtype=np.float64)
    if prio.shape != (n,):
        raise InvalidScoresError(f"priority has shape {prio.shape}, expected ({n},)")
    if np.any(prio[~np.isnan(prio)] < 0):
        raise InvalidScoresError("priority must be >= 0 (uncertainty scores are)")
    check_available(int(np.count_nonzero(~np.isnan(prio))), n, budget)
    ref = None if reference is None or len(reference) == 0 else unit_rows(reference, "reference embeddings")
    if ref is not None and ref.shape[1] != x.shape[1]:
        raise InvalidScoresError(f"reference has dimension {ref.shape[1]}, embeddings have {x.shape[1]}")
    return greedy_rows(x, budget, prio, weight, ref, min_distance, block_rows)


def greedy_rows(
    x: NDArray[np.float32],
    budget: int,
    priority: NDArray[np.float64],
    weight: float,
    reference: NDArray[np.float32] | None,
    min_distance: float,
    block_rows: int = BLOCK_ROWS,
) -> GreedyResult:
    """``greedy_select`` on inputs already checked (by it, or by ``PoolView``): unit float32 rows, priority
    (N,) >= 0 with NaN for rows never to pick, 1 <= budget <= the rows not NaN. What strategies call."""
    usable = ~np.isnan(priority)
    reference = None if reference is None or len(reference) == 0 else reference
    return _greedy(x, budget, np.where(usable, priority, 0.0), usable, weight, reference, min_distance, block_rows)


def _greedy(
    x: NDArray[np.float32],
    budget: int,
    prio: NDArray[np.float64],
    usable: NDArray[np.bool_],
    weight: float,
    reference: NDArray[np.float32] | None,
    min_distance: float,
    block_rows: int,
) -> GreedyResult:
    n, dim = x.shape
    bound: NDArray[np.float32] = np.full(n, MAX_DISTANCE, dtype=np.float32)
    # With weight 0 the keys ignore distances, which only matter for the near-duplicate test of rows that reach
    # the top: their distance to the reference set is computed block by block, for the blocks that get there
    # (a budget of 500 from a million items then searches a few blocks instead of the whole pool).
    lazy_reference = reference is not None and weight == 0.0
    if reference is not None and weight == 0.0 and min_distance == 0.0:
        reference = None  # no distance is ever looked at
    ref_index = None
    if reference is not None and lazy_reference:
        ref_index = make_index(dim)
        ref_index.add(reference)
    elif reference is not None:
        bound = np.minimum(bound, min_cosine_distance(x, reference)).astype(np.float32)
    prio_term = prio ** (1.0 - weight) if weight < 1.0 else np.ones(n)
    alive = usable.copy()  # neither picked nor excluded

    def keys(rows: slice) -> NDArray[np.float64]:
        k = prio_term[rows] * (bound[rows].astype(np.float64) ** weight if weight > 0 else 1.0)
        return np.where(alive[rows], k, -np.inf)

    blocks = [slice(start, min(start + block_rows, n)) for start in range(0, n, block_rows)]
    key = np.empty(n, dtype=np.float64)
    for rows in blocks:
        key[rows] = keys(rows)
    block_key = np.array([key[rows].max() for rows in blocks])
    stamp = np.zeros(len(blocks), dtype=np.int64)  # centers each block is up to date with
    referenced = np.full(len(blocks), ref_index is None)  # the block's distances include the reference set
    centers = np.empty((budget, dim), dtype=np.float32)
    picked: list[int] = []
    picked_keys: list[float] = []
    picked_dist: list[float] = []
    skipped = 0

    if reference is None and weight > 0:
        # Nothing is covered yet: every distance is "infinite", so the first pick is decided by priority, or for
        # pure k-center by the farthest point from the mean embedding (an extreme, not an arbitrary, first center).
        if weight == 1.0:
            mean = usable.astype(np.float32) @ x  # the mean direction without copying the usable rows
            first_key = np.where(usable, -(x @ mean), -np.inf)
        else:
            first_key = np.where(usable, prio, -np.inf)
        first = int(np.argmax(first_key))
        centers[0] = x[first]
        picked.append(first)
        picked_keys.append(float(key[first]))
        picked_dist.append(float(MAX_DISTANCE))
        alive[first] = False
        b = first // block_rows
        key[blocks[b]] = keys(blocks[b])
        block_key[b] = key[blocks[b]].max()

    while len(picked) < budget:
        b = int(np.argmax(block_key))
        if block_key[b] == -np.inf:
            break  # nothing selectable is left
        rows = blocks[b]
        if not referenced[b] and ref_index is not None:
            dist, _ = ref_index.nearest(x[rows], 1)
            np.minimum(bound[rows], np.maximum(dist[:, 0], 0.0), out=bound[rows])
            referenced[b] = True
            continue  # keys do not depend on distances at weight 0: the block stays on top, now checked
        if stamp[b] < len(picked):
            new = centers[stamp[b] : len(picked)]
            nearest = 1.0 - (x[rows] @ new.T).max(axis=1)
            np.minimum(bound[rows], np.maximum(nearest, 0.0), out=bound[rows])
            stamp[b] = len(picked)
            key[rows] = keys(rows)
            block_key[b] = key[rows].max()
            continue
        i = rows.start + int(np.argmax(key[rows]))
        if bound[i] < min_distance:
            alive[i] = False  # a near-duplicate of something selected, queued or labeled
            skipped += 1
            if weight == 1.0:
                break  # k-center: the farthest candidate is a near-duplicate, so all remaining ones are
            key[i] = -np.inf
            block_key[b] = key[rows].max()
            continue
        centers[len(picked)] = x[i]
        picked.append(i)
        picked_keys.append(float(key[i]))
        picked_dist.append(float(bound[i]))
        alive[i] = False
        key[i] = -np.inf
        block_key[b] = key[rows].max()
    return GreedyResult(
        indices=np.asarray(picked, dtype=np.int64),
        keys=np.asarray(picked_keys, dtype=np.float64),
        distances=np.asarray(picked_dist, dtype=np.float32),
        skipped=skipped,
    )
