"""The test set: pool items drawn uniformly at random — not by the strategy — labeled in Label Studio like any task,
and used only to evaluate (never trained on, never selected again).

Why: the held-out split of actively selected items is small and biased (the strategy picked the hardest cases), so
promote-if-better on it is noise. A random sample of the pool measures what the model will meet.

- **Draw** (``draw_test_set``): the eligible items are the pool's selectable ones (decoded, a valid prediction by
  the current model, never selected, queued or labeled; from an ``ls://`` pool, whose tasks are all queued, its
  tasks no annotation or selection touched), minus perceptual-hash copies of taken items (a copy of a
  training image would flatter the model). Each gets a random key, a hash of (``train.seed``, content id); the
  smallest keys are drawn. The key does not depend on the order items were scanned, and a top-up draws the next
  keys of the same order, so reruns and crashes never draw twice: the set only grows to its target size, and each
  draw is one recorded selection (``purpose`` ``test``), pushed by the ordinary push (exactly once).
- **Size** (``target_size``): a number, or ``auto``: n = z² p (1 − p) / h² for a ``train.confidence`` interval of
  half-width ``train.eval_half_width`` on a proportion p — the current model's recorded metric, or 0.5 (the worst
  case) before there is one.
- **Labels**: every label of a test item is evaluation-only (``split_test``), whoever made it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from curation.errors import ConfigError, NothingToSelectError
from curation.reports import Report

if TYPE_CHECKING:
    from curation.config import StrategySettings, TrainSettings
    from store import Store
    from store.records import LabeledExample, ModelVersionRecord

TEST_STRATEGY = "random-test-set"  # the strategy name a test draw is recorded under
TEST_SPLIT = "test"  # the split an exported test item gets
TEST_MARK = {"curate_set": "test"}  # what a test task carries in its data and meta in Label Studio


def size_for_half_width(half_width: float, confidence: float, p: float = 0.5) -> int:
    """Items a normal-approximation interval of ``confidence`` on a proportion ``p`` needs to be ±``half_width``
    wide: z² p (1 − p) / h² (p = 0.5 is the worst case: 385 items for ±0.05 at 95 %)."""
    if not 0 < half_width < 1 or not 0 < confidence < 1:
        raise ValueError("half_width and confidence must lie in (0, 1)")
    p = min(max(p, 0.0), 1.0)
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    variance = max(p * (1 - p), 1e-4)  # a model at 0 or 1 still gets a set large enough to see a change
    return max(1, math.ceil(z * z * variance / (half_width * half_width) - 1e-9))


def target_size(train: TrainSettings, current: ModelVersionRecord | None, size: int | str | None = None) -> int | None:
    """How many items the test set should hold: ``size`` (a number or ``auto``), else ``train.test_set_size``;
    None when neither asks for a test set."""
    wanted = train.test_set_size if size is None else size
    if wanted is None:
        return None
    if wanted == "auto":
        if train.eval_half_width is None:
            raise ConfigError("a test set of size auto needs train.eval_half_width (the interval's target half-width)")
        p = current.metric_value if current is not None and current.metric_value is not None else 0.5
        if not math.isfinite(p) or not 0 <= p <= 1:
            p = 0.5  # a metric that is not a proportion: the worst case
        return size_for_half_width(train.eval_half_width, train.confidence, p)
    if isinstance(wanted, str):
        try:
            wanted = int(wanted)
        except ValueError:
            raise ConfigError(f"test set size {wanted!r}: expected a positive number or auto") from None
    if wanted < 1:
        raise ConfigError(f"test set size {wanted}: expected a positive number or auto")
    return int(wanted)


def random_key(content_id: str, seed: int) -> float:
    """An item's place in the seeded random order, in [0, 1): the same for the same content in any database."""
    digest = hashlib.sha256(f"test-set:{seed}:{content_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class TestSetReport(Report):
    size: int  # items in the test set now
    target: int | None  # the size it was drawn towards
    drawn: int = 0  # drawn by this run
    selection_id: int | None = None
    eligible: int = 0  # items that could be drawn
    skipped_copies: int = 0  # eligible items left out as perceptual-hash copies of taken items
    seed: int = 0
    labeled: int = 0  # test items with a label (evaluation-only)
    queued: int = 0  # test items that are tasks in a project, not labeled yet
    warnings: list[str] = field(default_factory=list)
    push: dict[str, object] | None = None
    marked: int = 0  # existing tasks marked as test tasks (an ls:// pool: nothing is pushed)
    queue: dict[str, object] | None = None  # the re-ranking that placed them (an ls:// pool)


def draw_test_set(
    store: Store,
    pool_id: int,
    mv: ModelVersionRecord,
    target: int,
    strategy: StrategySettings,
    *,
    seed: int,
    push_to: int | None = None,
    among: Sequence[int] | None = None,
    before_record: Callable[[list[int]], object] | None = None,
) -> TestSetReport:
    """Grow the test set to ``target`` items with a uniform random draw from pool ``pool_id`` (see the module
    docstring), recorded as one ``test`` selection meant for project ``push_to``. Nothing is drawn when the set
    is that large already.

    ``among``: the items eligible instead of the pool's selectable ones (an ``ls://`` pool's untouched tasks,
    queued already); they still need a valid prediction. ``before_record`` gets the drawn items before the draw
    is recorded (an ``ls://`` pool marks their tasks: a crash in between draws the same items again)."""
    from curation.selection import FALLBACK_MEASURE, candidate_uncertainty, exclude_copies, items_uncertainty

    have = store.selections.test_items()
    report = TestSetReport(size=len(have), target=target, seed=seed)
    need = target - len(have)
    if need <= 0:
        return report
    taken = store.items.taken()
    if among is None:
        cands = candidate_uncertainty(store, pool_id, mv, FALLBACK_MEASURE, strategy.detection)
        ids: NDArray[np.int64] = cands.item_ids[~np.isin(cands.item_ids, cands.corrupt)]
        valid: NDArray[np.bool_] = np.ones(len(ids), dtype=bool)
    else:
        ids = np.asarray(sorted({int(i) for i in among}), dtype=np.int64)
        cands = items_uncertainty(store, mv, ids, FALLBACK_MEASURE, strategy.detection)
        valid = ~np.isnan(cands.uncertainty)
        taken = taken[~np.isin(taken, ids)]  # queued is not taken here: every eligible task is queued
    keys = np.array([random_key(c, seed) for c in store.items.content_ids([int(i) for i in ids])], dtype=np.float64)
    # exclude_copies keeps the candidate with the higher priority of a group of copies: the smaller random key
    cands.item_ids, cands.uncertainty = ids, np.where(valid, 1.0 - keys, np.nan)
    report.skipped_copies = exclude_copies(store, cands, taken, strategy.hash_distance)
    eligible = ~np.isnan(cands.uncertainty)
    report.eligible = int(eligible.sum())
    if report.eligible == 0:
        raise NothingToSelectError(
            "nothing to draw for the test set: every scored item of the pool is selected, queued, labeled, failed "
            "or a copy of one"
        )
    order = np.flatnonzero(eligible)[np.argsort(keys[eligible], kind="stable")][:need]
    if len(order) < need:
        report.warnings.append(f"only {len(order)} eligible items remain; the test set holds {len(have) + len(order)}")
    chosen = [int(i) for i in ids[order]]
    if before_record is not None:
        before_record(chosen)
    report.selection_id = store.selections.record(
        pool_id=pool_id,
        model_version_id=mv.id,
        strategy=TEST_STRATEGY,
        options={"seed": seed, "target": target, "hash_distance": strategy.hash_distance},
        budget=need,
        item_ids=chosen,
        scores=[float(keys[i]) for i in order],
        push_ls_project_id=push_to,
        purpose="test",
    )
    report.drawn = len(chosen)
    report.size = len(have) + len(chosen)
    return report


def split_test(
    examples: Sequence[LabeledExample], test_items: dict[int, int] | set[int]
) -> tuple[list[LabeledExample], list[LabeledExample]]:
    """(training examples, test examples): every example of a test item is evaluation-only; test examples in the
    test set's draw order."""
    train = [e for e in examples if e.item_id not in test_items]
    test = [e for e in examples if e.item_id in test_items]
    if isinstance(test_items, dict):
        test.sort(key=lambda e: test_items[e.item_id])
    return train, test
