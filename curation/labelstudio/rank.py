"""Ordering a project's queued tasks with a strategy, and the signature that tells whether a ranking is stale."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from curation.config import StrategySettings
from curation.selection import FALLBACK_MEASURE, items_uncertainty, pool_view
from store import Store
from store.records import ModelVersionRecord, QueuedTask
from strategies import Strategy


def ranking_options(
    cfg: StrategySettings, mv: ModelVersionRecord, n_labeled: int, encoder: ModelVersionRecord | None = None
) -> dict[str, Any]:
    """Every setting that changes the order: a changed setting must re-rank, not be a no-op."""
    options = {
        **cfg.options_for(cfg.name),
        "_balance": cfg.balance,
        "_min_distance": cfg.min_distance,
        "_detection": cfg.detection.model_dump() if mv.task != "classify" else None,
        "_labeled": n_labeled,  # diversity is measured against labeled items
    }
    if encoder is not None:  # only when set: an unchanged setup keeps its signature
        options["_embedding_model"] = encoder.version
    return options


def ranking_signature(
    mv: ModelVersionRecord, strategy: str, options: dict[str, Any], seed: int, item_ids: Sequence[int]
) -> str:
    """A digest of what a ranking is computed from (the order of ``item_ids`` does not matter)."""
    blob = json.dumps(
        [mv.version, strategy, options, seed, sorted(int(i) for i in item_ids)], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def rank_queue(
    store: Store,
    cfg: StrategySettings,
    mv: ModelVersionRecord,
    queue: Sequence[QueuedTask],
    strategy: Strategy,
    labeled: NDArray[np.int64],
    encoder: ModelVersionRecord | None = None,
) -> tuple[list[QueuedTask], dict[int, int | None]]:
    """Order the queued tasks with the strategy, diversity measured against the ``labeled`` items. Tasks the
    strategy does not place (no valid model output, or a near-duplicate of a better-placed task) keep their
    relative order at the end: they are tasks already, so they stay in the queue. Returns the order and each
    item's cluster. ``encoder``: the image encoder whose embeddings diversity uses (``pool_view``); a task without
    one is placed at the end too."""
    item_ids = np.array([q.item_id for q in queue], dtype=np.int64)
    cands = items_uncertainty(store, mv, item_ids, strategy.measure or FALLBACK_MEASURE, cfg.detection)
    view, _ = pool_view(store, mv, cands, strategy, cfg, labeled, encoder)
    valid = ~np.isnan(view.uncertainty if view.uncertainty is not None else cands.uncertainty)
    order: list[int] = []
    clusters: dict[int, int | None] = {}
    if valid.any():
        picked = strategy.select(view, int(valid.sum()))
        order = [int(i) for i in picked.indices]
        if picked.clusters is not None:
            clusters = {int(item_ids[i]): int(c) for i, c in zip(picked.indices, picked.clusters, strict=True)}
    chosen = set(order)
    order += [i for i in range(len(queue)) if i not in chosen]
    return [queue[i] for i in order], clusters


T = TypeVar("T")


def place_tests(order: Sequence[T], test_rank: Mapping[int, int], every: int, item_id: Callable[[T], int]) -> list[T]:
    """The queue position rule for test-set tasks (``label_studio.test_set_every``): positions 1, 1 + every,
    1 + 2·every, … go to test tasks while any is left, in their random draw order (``test_rank``), the other tasks
    keep their order in between (``every`` 1: all test tasks first). The test tasks must get labeled, and in draw
    order: a partly labeled test set is then still a uniform random sample of the pool."""
    tests = sorted((x for x in order if item_id(x) in test_rank), key=lambda x: test_rank[item_id(x)])
    if not tests:
        return list(order)
    rest = [x for x in order if item_id(x) not in test_rank]
    out: list[T] = []
    t = r = 0
    while t < len(tests) or r < len(rest):
        if t < len(tests) and (len(out) % every == 0 or r >= len(rest)):
            out.append(tests[t])
            t += 1
        else:
            out.append(rest[r])
            r += 1
    return out


def moved_count(old_positions: Sequence[int | None]) -> int:
    """How many tasks a re-ranking moved: the fewest tasks that, taken out and put back elsewhere, turn the old
    order into the new one (the tasks outside a longest run that kept its relative order). ``old_positions``: each
    task's old position, in the new order (None: it had none and is not counted). A task that left the head moves
    only itself, not everyone behind it."""
    placed = [p for p in old_positions if p is not None]
    tails: list[int] = []  # patience sorting: tails[k] is the smallest tail of an increasing run of length k + 1
    for p in placed:
        k = bisect.bisect_left(tails, p)
        if k == len(tails):
            tails.append(p)
        else:
            tails[k] = p
    return len(placed) - len(tails)


def confidences(
    store: Store, cfg: StrategySettings, mv: ModelVersionRecord, item_ids: Sequence[int], measure: str | None
) -> list[float | None]:
    """The model's confidence in each item, 1 − its uncertainty under ``measure`` (the ranking strategy's; the
    fallback measure for strategies without one), in [0, 1]; None where the model has no valid output."""
    if not item_ids:
        return []
    ids = np.array([int(i) for i in item_ids], dtype=np.int64)
    values = items_uncertainty(store, mv, ids, measure or FALLBACK_MEASURE, cfg.detection).uncertainty
    return [None if np.isnan(u) else 1.0 - min(max(float(u), 0.0), 1.0) for u in values]
