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
from curation.files import atomic_path, check_output_path
from curation.scoring.pool import item_location
from store import Store
from store.records import ClassificationScores, DetectionScores, ModelVersionRecord, SelectedItem
from strategies import (
    ClassBalanced,
    EmptyPoolError,
    PoolExhaustedError,
    PoolView,
    Strategy,
    StrategyError,
    aggregate_boxes,
    center_in_place,
    get_strategy,
    hash_duplicates,
    uncertainty_scores,
)

FALLBACK_MEASURE = "least_confidence"  # used only to find excluded items for strategies that rank otherwise


@dataclass
class Candidates:
    item_ids: NDArray[np.int64]
    uncertainty: NDArray[np.float64]  # NaN = excluded
    classes: NDArray[np.bool_]  # (N, C): the classes each item is predicted to contain
    corrupt: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Items whose stored output no model can have written (see ``unusable_outputs``): excluded."""
    probs: NDArray[np.float32] | None = None
    """(N, C) class probabilities of a classification model (zero rows for unusable outputs), for BADGE."""


@dataclass
class SelectionResult:
    selection_id: int
    strategy: str
    model_version: str
    budget: int
    available: int
    items: list[SelectedItem]
    skipped_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    skipped_copies: int = 0  # candidates excluded as perceptual-hash copies (``exclude_copies``)


AUTO = "auto"
AUTO_FALLBACK = "hybrid"  # ``strategy: auto`` before any ``curate simulate`` recommendation: the default


def resolve_auto(settings: StrategySettings, store: Store | None) -> tuple[StrategySettings, str | None]:
    """``strategy: auto`` → the strategy ``curate simulate`` last recommended for this database (``hybrid``, the
    default, when there is none or no database); other names unchanged. Returns the settings to use and a note
    saying what ``auto`` chose, for the command's report."""
    if settings.name != AUTO:
        return settings, None
    from strategies import STRATEGIES

    rec = store.recommendations.latest() if store is not None else None
    if rec is None or rec["strategy"] not in STRATEGIES:
        note = f"strategy auto: no curate simulate recommendation in this database; using {AUTO_FALLBACK}"
        return settings.model_copy(update={"name": AUTO_FALLBACK}), note
    where = f" on {rec['dataset']}" if rec.get("dataset") else ""
    note = f"strategy auto: using {rec['strategy']} (recommended by curate simulate{where})"
    return settings.model_copy(update={"name": rec["strategy"]}), note


def build_strategy(settings: StrategySettings, store: Store | None = None) -> Strategy:
    """The configured strategy, wrapped for class balance when asked. ``--strategy`` reaches it as the
    ``strategy.name`` setting: there is one channel for the choice. ``auto`` is resolved with ``store``'s stored
    recommendation (``resolve_auto``)."""
    settings, _ = resolve_auto(settings, store)
    try:
        strategy = get_strategy(settings.name, **settings.options_for(settings.name))
    except StrategyError as exc:
        raise ConfigError(f"strategy: {exc}") from None
    if settings.balance:
        strategy = ClassBalanced(strategy)
    return strategy


def _bad_rows(values: NDArray[np.floating], upper: float = 1.0 + 1e-6) -> NDArray[np.bool_]:
    if values.size == 0:
        return np.zeros(len(values), dtype=bool)
    rows = values.reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(rows) & (rows >= 0) & (rows <= upper)).all(axis=1)


def unusable_outputs(scores: ClassificationScores | DetectionScores) -> NDArray[np.bool_]:
    """Per item: a stored output that no model can have written (NaN, infinite, or a score outside [0, 1]): an
    edited or corrupt database row. Scoring checks every output before storing it, so only the database is to
    blame; such an item is excluded (and named) rather than failing every selection."""
    if isinstance(scores, ClassificationScores):
        return _bad_rows(scores.probs)
    bad_boxes = _bad_rows(scores.box_scores) | _bad_rows(scores.box_conf)
    bad = np.zeros(len(scores.item_ids), dtype=bool)
    bad[scores.box_image_index[bad_boxes]] = True
    return bad


def scores_uncertainty(
    scores: ClassificationScores | DetectionScores,
    n_classes: int,
    measure: str,
    detection: DetectionAggregation,
    bad: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per-item uncertainty and predicted classes from model outputs (stored ones, or ``simulate``'s); NaN
    (excluded) for an item whose output is unusable (``bad``: ``unusable_outputs``, computed here if not given)."""
    k = n_classes
    bad = unusable_outputs(scores) if bad is None else bad
    if isinstance(scores, ClassificationScores):
        n = len(scores.item_ids)
        classes = np.zeros((n, k), dtype=bool)
        if n == 0:
            return np.zeros(0), classes
        probs = np.where(bad[:, None], 0.0, scores.probs) if bad.any() else scores.probs
        classes[np.arange(n), np.argmax(probs, axis=1)] = True
        classes[bad] = False
        values = uncertainty_scores(probs, measure)
        values[bad] = np.nan
        return values, classes
    keep = scores.box_conf >= detection.conf
    if bad.any():
        with np.errstate(invalid="ignore"):
            keep = np.nan_to_num(scores.box_conf, nan=-1.0) >= detection.conf
        keep &= ~bad[scores.box_image_index]
    box_unc = uncertainty_scores(scores.box_scores[keep], measure)
    image = scores.box_image_index[keep]
    values = aggregate_boxes(
        box_unc,
        image,
        len(scores.item_ids),
        reducer=detection.reducer,
        top_k=detection.top_k,
        empty=detection.empty,
    )
    classes = np.zeros((len(scores.item_ids), k), dtype=bool)
    if len(image):
        classes[image, np.argmax(scores.box_scores[keep], axis=1)] = True
    values[bad] = np.nan
    return values, classes


def candidate_uncertainty(
    store: Store, pool_id: int, mv: ModelVersionRecord, measure: str, detection: DetectionAggregation
) -> Candidates:
    """Per-item uncertainty of every selectable item (higher = more worth labeling)."""
    scores: ClassificationScores | DetectionScores = (
        store.scores.candidate_classification(pool_id, mv.id)
        if mv.task == "classify"
        else store.scores.candidate_detection(pool_id, mv.id, len(mv.class_names))
    )
    bad = unusable_outputs(scores)
    values, classes = scores_uncertainty(scores, len(mv.class_names), measure, detection, bad)
    return Candidates(scores.item_ids, values, classes, scores.item_ids[bad], output_probs(scores, bad))


def output_probs(
    scores: ClassificationScores | DetectionScores, bad: NDArray[np.bool_] | None = None
) -> NDArray[np.float32] | None:
    """A classification model's probabilities as a ``PoolView`` takes them (unusable rows zeroed: the item is
    excluded by its NaN uncertainty anyway); None for detection, which has no per-image distribution."""
    if not isinstance(scores, ClassificationScores):
        return None
    bad = unusable_outputs(scores) if bad is None else bad
    probs = np.asarray(scores.probs, dtype=np.float32)
    return np.where(bad[:, None], np.float32(0.0), probs) if bad.any() else probs


def items_uncertainty(
    store: Store, mv: ModelVersionRecord, item_ids: NDArray[np.int64], measure: str, detection: DetectionAggregation
) -> Candidates:
    """The same for given items, aligned with ``item_ids`` (NaN where the model has no valid output)."""
    ids = [int(i) for i in item_ids]
    scores: ClassificationScores | DetectionScores = (
        store.scores.classification_for(mv.id, ids)
        if mv.task == "classify"
        else store.scores.detection_for(mv.id, ids, len(mv.class_names))
    )
    values, classes = scores_uncertainty(scores, len(mv.class_names), measure, detection)
    position = {int(i): k for k, i in enumerate(scores.item_ids)}
    rows = np.array([position.get(i, -1) for i in ids], dtype=np.int64)
    found = rows >= 0
    out_values = np.full(len(ids), np.nan)
    out_values[found] = values[rows[found]]
    out_classes = np.zeros((len(ids), len(mv.class_names)), dtype=bool)
    out_classes[found] = classes[rows[found]]
    probs = output_probs(scores)
    out_probs = None
    if probs is not None:
        out_probs = np.zeros((len(ids), len(mv.class_names)), dtype=np.float32)
        out_probs[found] = probs[rows[found]]
    return Candidates(np.asarray(ids, dtype=np.int64), out_values, out_classes, probs=out_probs)


def build_view(
    uncertainty: NDArray[np.float64],
    classes: NDArray[np.bool_] | None,
    embeddings: NDArray[np.float32] | None,
    reference: NDArray[np.float32] | None,
    settings: StrategySettings,
    probs: NDArray[np.float32] | None = None,
) -> PoolView:
    """The ``PoolView`` every selection runs on — ``curate select``, ``reprioritize`` and ``simulate`` alike.
    Embeddings (and the reference set) are centred in place: distances between centred embeddings are comparable
    across models (see ``center_in_place``). ``probs``: only for strategies that read them (``needs_probs``)."""
    if embeddings is not None:
        center_in_place(embeddings, *([reference] if reference is not None and len(reference) else []))
    return PoolView(
        uncertainty=uncertainty,
        embeddings=embeddings,
        reference_embeddings=reference if reference is not None and len(reference) else None,
        seed=settings.seed,
        min_distance=settings.min_distance if embeddings is not None else 0.0,
        classes=classes,
        probs=probs,
    )


def exclude_copies(store: Store, cands: Candidates, taken: NDArray[np.int64], max_distance: int | None) -> int:
    """Exclude (NaN uncertainty) every candidate whose perceptual hash is within ``max_distance`` bits of a taken
    item's or of a more uncertain candidate's, so one of each group of copies remains; how many were excluded.
    Model-independent, so a young or random model cannot miss them; items without a hash are left alone."""
    if max_distance is None or len(cands.item_ids) == 0:
        return 0
    hashes, found = store.items.phashes([int(i) for i in cands.item_ids])
    usable = found & ~np.isnan(cands.uncertainty)
    if not usable.any():
        return 0
    ref, ref_found = store.items.phashes([int(i) for i in taken])
    copies = hash_duplicates(hashes, max_distance, reference=ref[ref_found], priority=cands.uncertainty, valid=usable)
    cands.uncertainty = np.where(copies, np.nan, cands.uncertainty)
    return int(np.count_nonzero(copies))


def needs_embeddings(strategy: Strategy, settings: StrategySettings) -> bool:
    return strategy.needs_embeddings or settings.min_distance > 0


def pool_view(
    store: Store,
    mv: ModelVersionRecord,
    cands: Candidates,
    strategy: Strategy,
    settings: StrategySettings,
    reference_ids: NDArray[np.int64],
    encoder: ModelVersionRecord | None = None,
) -> tuple[PoolView, int]:
    """Everything the strategy may need, loaded once: embeddings only when the strategy or near-duplicate
    suppression needs them (items without one are then excluded), and the reference set's embeddings.

    With an image ``encoder`` (``embedding.model``) the embeddings are the encoder's, for the candidates and the
    reference set alike; a strategy that reads the model's probabilities (BADGE: its gradient embedding pairs them
    with the model's own penultimate features) keeps the model's. Returns the view and how many otherwise
    selectable candidates were left out for lacking an encoder embedding (0 without an encoder)."""
    uncertainty = cands.uncertainty
    embeddings = reference = None
    missing = 0
    if needs_embeddings(strategy, settings):
        source = encoder if encoder is not None and uses_encoder(strategy, settings, encoder) else mv
        if not source.embedding_dim:
            raise NothingToSelectError(f"model version {source.version} has no stored embeddings; score again")
        embeddings, found = store.scores.embeddings(source.id, cands.item_ids, source.embedding_dim)
        finite = np.isfinite(embeddings).all(axis=1)  # scoring stores finite ones only: an edited row
        if not finite.all():
            found &= finite
            embeddings[~finite] = 0.0
        if source is encoder:
            missing = int(np.count_nonzero(~found & ~np.isnan(uncertainty)))
        uncertainty = np.where(found, uncertainty, np.nan)
        if len(reference_ids):
            ref, ref_found = store.scores.embeddings(source.id, reference_ids, source.embedding_dim)
            ref_found &= np.isfinite(ref).all(axis=1)
            reference = np.ascontiguousarray(ref[ref_found])
    probs = None
    if strategy.needs_probs:
        if cands.probs is None:
            raise ConfigError(
                f"strategy {strategy.name!r} needs class probabilities: it works with classification models only "
                f"(model version {mv.version} is a {mv.task} model)"
            )
        probs = cands.probs
    return build_view(uncertainty, cands.classes, embeddings, reference, settings, probs), missing


def uses_encoder(strategy: Strategy, settings: StrategySettings, encoder: ModelVersionRecord | None) -> bool:
    """Whether ``pool_view`` reads ``encoder``'s embeddings for this strategy (see there)."""
    return encoder is not None and needs_embeddings(strategy, settings) and not strategy.needs_probs


def run_selection(
    store: Store,
    pool_id: int,
    mv: ModelVersionRecord,
    settings: StrategySettings,
    budget: int,
    *,
    push_to: int | None = None,
    encoder: ModelVersionRecord | None = None,
) -> SelectionResult:
    """Select up to ``budget`` new items and record them (meant for the Label Studio project ``push_to``, an
    ``ls_projects`` id, if given). Fewer are selected (with a warning) if fewer remain. ``encoder``: the image
    encoder whose embeddings diversity and near-duplicates use (``pool_view``)."""
    settings, note = resolve_auto(settings, store)
    strategy = build_strategy(settings)
    warnings: list[str] = [note] if note else []
    cands = candidate_uncertainty(store, pool_id, mv, strategy.measure or FALLBACK_MEASURE, settings.detection)
    taken = store.items.taken()  # every pool's selected, queued and labeled items: copies may sit in another pool
    copies = exclude_copies(store, cands, taken, settings.hash_distance)
    if copies:
        warnings.append(
            f"skipped {copies} copy(ies) by perceptual hash (within {settings.hash_distance} bits of a selected, "
            "queued or labeled item anywhere in the database, or of a more uncertain candidate)"
        )
    view, missing = pool_view(store, mv, cands, strategy, settings, taken, encoder)
    if missing and encoder is not None:
        warnings.append(
            f"left out {missing} item(s) without an embedding by embedding.model ({encoder.version}): "
            "`curate score` computes them"
        )
    uncertainty = view.uncertainty if view.uncertainty is not None else cands.uncertainty
    available = int(np.count_nonzero(~np.isnan(uncertainty)))
    if available == 0:
        raise NothingToSelectError(
            "nothing to select: every item in the pool is already selected, failed, invalid or excluded"
            if len(cands.item_ids) or store.items.counts(pool_id, mv.id)["items"]
            else "nothing to select: the pool has no scored images"
        )
    if len(cands.corrupt):
        paths = store.items.paths(pool_id, [int(i) for i in cands.corrupt[:5]])
        more = f" and {len(cands.corrupt) - 5} more" if len(cands.corrupt) > 5 else ""
        warnings.append(
            f"excluded {len(cands.corrupt)} item(s) whose stored prediction by {mv.version} is not a valid "
            f"probability (NaN, infinite or outside [0, 1]; an edited or corrupt database row): "
            f"{', '.join(paths)}{more}; `curate score --rescore` scores them again"
        )
    take = min(budget, available)
    if take < budget:
        warnings.append(f"only {available} selectable items remain; selecting {take} instead of {budget}")
    try:
        picked = strategy.select(view, take)
    except (EmptyPoolError, PoolExhaustedError) as exc:
        raise NothingToSelectError(str(exc)) from None
    if picked.skipped:
        warnings.append(
            f"skipped {picked.skipped} near-duplicate(s) (cosine distance < {settings.min_distance} to a selected, "
            "queued or labeled item)"
        )
    if 0 < len(picked) < take:
        warnings.append(f"selected {len(picked)}: every other candidate is a near-duplicate")
    if len(picked) == 0:
        raise NothingToSelectError("nothing to select: every candidate is a near-duplicate of a taken item")
    item_ids = cands.item_ids[picked.indices]
    options: dict[str, Any] = settings.options_for(settings.name)
    options["min_distance"] = view.min_distance
    if encoder is not None and uses_encoder(strategy, settings, encoder):
        options["embedding_model"] = encoder.version
    if mv.task != "classify":
        options["detection"] = settings.detection.model_dump()
    selection_id = store.selections.record(
        pool_id=pool_id,
        model_version_id=mv.id,
        strategy=strategy.name,
        options=options,
        budget=budget,
        item_ids=[int(i) for i in item_ids],
        scores=[float(s) for s in picked.scores],
        clusters=None if picked.clusters is None else [int(c) for c in picked.clusters],
        push_ls_project_id=push_to,
    )
    return SelectionResult(
        selection_id=selection_id,
        strategy=strategy.name,
        model_version=mv.version,
        budget=budget,
        available=available,
        items=store.selections.items(selection_id),
        skipped_duplicates=picked.skipped,
        warnings=warnings,
        skipped_copies=copies,
    )


def selection_rows(result: SelectionResult, pool_root: str) -> list[dict[str, Any]]:
    """One dict per selected item: what ``--out`` and ``--json`` print."""
    return [
        {
            "item_id": item.content_id,
            "path": item_location(pool_root, item.path),
            "rank": item.rank,
            "score": item.score,
            "strategy": result.strategy,
            "model_version": result.model_version,
            "cluster": item.cluster,
        }
        for item in result.items
    ]


SELECTION_SUFFIXES = (".jsonl", ".json", ".csv")


def check_selection_out(path: Path) -> Path:
    """``--out`` must be writable before anything is selected: a selection uses its items up."""
    return check_output_path(path, "--out", SELECTION_SUFFIXES)


def write_selection(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSONL (default) or CSV (``.csv``); atomically, so a crash never leaves half a file."""
    check_selection_out(path)
    suffix = path.suffix.lower()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
            if suffix == ".csv":
                fields = ["rank", "item_id", "path", "score", "strategy", "model_version", "cluster"]
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            else:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write --out {path}: {exc.strerror or exc}") from None
