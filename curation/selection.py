"""Selection orchestration: turn stored scores into a ``PoolView``, run a strategy, record the result.

Scoring is never repeated here: every uncertainty measure is computed from the stored probabilities (or per-box
class scores), so switching strategy re-ranks without running the model.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from curation.config import DetectionAggregation, StrategySettings
from curation.errors import ConfigError, NothingToSelectError
from curation.pool import absolute_path
from store.repository import ClassificationScores, DetectionScores, ModelVersionRecord, SelectedItem, Store
from strategies import (
    EmptyPoolError,
    PoolExhaustedError,
    PoolView,
    Strategy,
    StrategyError,
    aggregate_boxes,
    get_strategy,
    uncertainty_scores,
)

FALLBACK_MEASURE = "least_confidence"  # used only to find excluded items for strategies that rank otherwise


@dataclass
class Candidates:
    item_ids: NDArray[np.int64]
    uncertainty: NDArray[np.float64]  # NaN = excluded


@dataclass
class SelectionResult:
    selection_id: int
    strategy: str
    model_version: str
    budget: int
    available: int
    items: list[SelectedItem]
    warnings: list[str] = field(default_factory=list)


def build_strategy(settings: StrategySettings, name: str | None = None) -> Strategy:
    try:
        return get_strategy(name or settings.name, **settings.options)
    except StrategyError as exc:
        raise ConfigError(f"strategy: {exc}") from None


def _uncertainty(
    scores: ClassificationScores | DetectionScores,
    mv: ModelVersionRecord,
    measure: str,
    detection: DetectionAggregation,
) -> NDArray[np.float64]:
    if isinstance(scores, ClassificationScores):
        if len(scores.item_ids) == 0:
            return np.zeros(0)
        return uncertainty_scores(scores.probs, measure)
    keep = scores.box_conf >= detection.conf
    box_unc = uncertainty_scores(scores.box_scores[keep], measure)
    return aggregate_boxes(
        box_unc,
        scores.box_image_index[keep],
        len(scores.item_ids),
        reducer=detection.reducer,
        top_k=detection.top_k,
        empty=detection.empty,
    )


def candidate_uncertainty(
    store: Store, pool_id: int, mv: ModelVersionRecord, measure: str, detection: DetectionAggregation
) -> Candidates:
    """Per-item uncertainty of every selectable item (higher = more worth labeling)."""
    scores: ClassificationScores | DetectionScores = (
        store.candidate_classification(pool_id, mv.id)
        if mv.task == "classify"
        else store.candidate_detection(pool_id, mv.id, len(mv.class_names))
    )
    return Candidates(scores.item_ids, _uncertainty(scores, mv, measure, detection))


def uncertainty_for_items(
    store: Store,
    mv: ModelVersionRecord,
    item_ids: NDArray[np.int64],
    measure: str,
    detection: DetectionAggregation,
    *,
    with_embeddings: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float32] | None, NDArray[np.float32] | None]:
    """Uncertainty (NaN where the model has no valid output) and, on request, embeddings of ``item_ids`` plus
    the embeddings of labeled items (the reference diversity strategies spread away from), aligned with
    ``item_ids``."""
    ids = [int(i) for i in item_ids]
    scores: ClassificationScores | DetectionScores = (
        store.classification_for(mv.id, ids)
        if mv.task == "classify"
        else store.detection_for(mv.id, ids, len(mv.class_names))
    )
    values = _uncertainty(scores, mv, measure, detection)
    out: NDArray[np.float64] = np.full(len(ids), np.nan)
    position = {int(i): k for k, i in enumerate(scores.item_ids)}
    for k, item in enumerate(ids):
        if item in position:
            out[k] = values[position[item]]
    embeddings = reference = None
    if with_embeddings and mv.embedding_dim:
        embeddings, found = store.load_embeddings(mv.id, np.asarray(ids, dtype=np.int64), mv.embedding_dim)
        out = np.asarray(np.where(found, out, np.nan), dtype=np.float64)
        labeled = store.labeled_item_ids()
        if len(labeled):
            ref, ref_found = store.load_embeddings(mv.id, labeled, mv.embedding_dim)
            reference = ref[ref_found]
    return out, embeddings, reference


def run_selection(
    store: Store,
    pool_id: int,
    mv: ModelVersionRecord,
    settings: StrategySettings,
    budget: int,
    strategy_name: str | None = None,
) -> SelectionResult:
    """Select up to ``budget`` new items and record them. Fewer are selected (with a warning) if fewer remain."""
    strategy = build_strategy(settings, strategy_name)
    warnings: list[str] = []
    cands = candidate_uncertainty(store, pool_id, mv, strategy.measure or FALLBACK_MEASURE, settings.detection)
    uncertainty = cands.uncertainty
    embeddings = reference = None
    if strategy.needs_embeddings:
        if not mv.embedding_dim:
            raise NothingToSelectError(f"model version {mv.version} has no stored embeddings; rescore first")
        embeddings, found = store.load_embeddings(mv.id, cands.item_ids, mv.embedding_dim)
        uncertainty = np.where(found, uncertainty, np.nan)
        ref_ids = store.reference_item_ids(pool_id)
        if len(ref_ids):
            ref, ref_found = store.load_embeddings(mv.id, ref_ids, mv.embedding_dim)
            reference = ref[ref_found]
    available = int(np.count_nonzero(~np.isnan(uncertainty)))
    if available == 0:
        raise NothingToSelectError(
            "nothing to select: every item in the pool is already selected, failed, invalid or excluded"
            if len(cands.item_ids) or store.status_counts(pool_id, mv.id)["items"]
            else "nothing to select: the pool has no scored images"
        )
    take = min(budget, available)
    if take < budget:
        warnings.append(f"only {available} selectable items remain; selecting {take} instead of {budget}")
    view = PoolView(uncertainty=uncertainty, embeddings=embeddings, reference_embeddings=reference, seed=settings.seed)
    try:
        picked = strategy.select(view, take)
    except (EmptyPoolError, PoolExhaustedError) as exc:
        raise NothingToSelectError(str(exc)) from None
    item_ids = cands.item_ids[picked.indices]
    options: dict[str, Any] = dict(settings.options)
    if mv.task != "classify":
        options["detection"] = settings.detection.model_dump()
    selection_id = store.record_selection(
        pool_id=pool_id,
        model_version_id=mv.id,
        strategy=strategy.name,
        options=options,
        budget=budget,
        item_ids=[int(i) for i in item_ids],
        scores=[float(s) for s in picked.scores],
        clusters=None if picked.clusters is None else [int(c) for c in picked.clusters],
    )
    return SelectionResult(
        selection_id=selection_id,
        strategy=strategy.name,
        model_version=mv.version,
        budget=budget,
        available=available,
        items=store.selection_items(selection_id),
        warnings=warnings,
    )


def selection_rows(result: SelectionResult, pool_root: str) -> list[dict[str, Any]]:
    """One dict per selected item: what ``--out`` and ``--json`` print."""
    return [
        {
            "item_id": item.content_id,
            "path": str(absolute_path(pool_root, item.path)),
            "rank": item.rank,
            "score": item.score,
            "strategy": result.strategy,
            "model_version": result.model_version,
            "cluster": item.cluster,
        }
        for item in result.items
    ]


def write_selection(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSONL (default) or CSV (``.csv``); atomically, so a crash never leaves half a file."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise ConfigError(f"--out {path}: use a .jsonl or .csv file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            if suffix == ".csv":
                fields = ["rank", "item_id", "path", "score", "strategy", "model_version", "cluster"]
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            else:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write --out {path}: {exc.strerror or exc}") from None
