"""The jobs behind the commands: scan → score → select, and status. ``cli.py`` only parses, calls and prints."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation import queue
from curation.config import ModelSettings, Settings
from curation.errors import ModelLoadError, NothingToSelectError, ProjectNotFoundError
from curation.faults import checkpoint
from curation.images import Geometry
from curation.labelstudio import LabelStudioClient
from curation.mlflow_support import is_registry_uri
from curation.model import DetectionOptions, ModelRuntime, load_model, resolve_device
from curation.pool import PoolSource, ScanReport, absolute_path, resolve_pool, scan_pool
from curation.progress import NullProgress, Progress
from curation.scoring import ScoreJob, ScoringReport, score_items
from curation.selection import (
    FALLBACK_MEASURE,
    SelectionResult,
    build_strategy,
    candidate_uncertainty,
    run_selection,
    selection_rows,
    write_selection,
)
from curation.training import TrainingError, TrainReport, train_round
from store.lock import RunLock
from store.repository import ModelVersionRecord, Store


@dataclass
class ScoreOutcome:
    pool: PoolSource
    pool_id: int
    scan: ScanReport
    model: ModelVersionRecord
    device: str
    scoring: ScoringReport

    def summary(self) -> dict[str, Any]:
        return {
            "pool": str(self.pool.location),
            "files": self.scan.files,
            "new_items": self.scan.new_items,
            "duplicate_paths": self.scan.duplicate_paths,
            "skipped_files": [{"path": p, "reason": r} for p, r in self.scan.skipped],
            "model_version": self.model.version,
            "task": self.model.task,
            "device": self.device,
            "scored": self.scoring.scored,
            "failed": self.scoring.failed,
            "retry_later": self.scoring.retry_later,
            "invalid": self.scoring.invalid,
            "already_scored": self.scan.files - self.scan.duplicate_paths - self.scoring.todo,
            "seconds": round(self.scoring.seconds, 3),
            "images_per_s": round(self.scoring.images_per_s, 2),
            "failures": [{"path": p, "reason": r} for p, r in self.scoring.failures],
        }


@dataclass
class SelectOutcome:
    score: ScoreOutcome
    selection: SelectionResult
    rows: list[dict[str, Any]]
    out: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "selection_id": self.selection.selection_id,
            "strategy": self.selection.strategy,
            "model_version": self.selection.model_version,
            "budget": self.selection.budget,
            "selected": len(self.rows),
            "available": self.selection.available,
            "out": None if self.out is None else str(self.out),
            "warnings": self.selection.warnings,
            "skipped_duplicates": self.selection.skipped_duplicates,
            "scoring": self.score.summary(),
            "items": self.rows,
            **self.extra,
        }


def open_store(settings: Settings) -> Store:
    store = Store.open(settings.db)
    store.close_stale_runs()
    return store


def model_settings(settings: Settings, store: Store | None) -> ModelSettings:
    """Which model to run: ``--model``/``model.path`` if given (an MLflow ``models:/`` URI is fetched first), else
    the registry's current model."""
    model = settings.model
    if model.path and is_registry_uri(model.path):
        from curation.mlflow_support import resolve_model_uri

        local = resolve_model_uri(model.path, settings)
        return model.model_copy(update={"path": str(local)})
    if model.path or store is None:
        return model
    current = store.current_model()
    if current is None:
        raise ModelLoadError(
            "no model given and the registry has no current model: pass --model (a .pt, .yaml or TorchScript "
            "file) or set model.path"
        )
    path = current.weights_path or current.source
    return model.model_copy(update={"path": path, "version": model.version or current.version})


def load_runtime(settings: Settings, store: Store | None = None) -> ModelRuntime:
    """Load the model (see ``model_settings``) on the configured device and learn its embedding size with one
    warm-up batch. Weights the database already knows keep their registered version name."""
    device = resolve_device(settings.scoring.device)
    chosen = model_settings(settings, store)
    runtime = load_model(
        chosen,
        device,
        precision=settings.scoring.precision,
        detection=DetectionOptions(settings.scoring.box_conf, settings.scoring.iou, settings.scoring.max_det),
    )
    if store is not None and not chosen.version and runtime.info.digest:
        known = store.model_version_by_digest(runtime.info.digest)
        if known is not None:
            runtime.info = replace(runtime.info, version=known.version)
    size = runtime.info.imgsz
    blank = torch.full((1, 3, size, size), 114, dtype=torch.uint8)
    try:
        runtime.infer(blank, [Geometry(size, size, 1.0, 0.0, 0.0)])
    except RuntimeError as exc:  # e.g. a TorchScript model that wants another input size
        raise ModelLoadError(f"model {runtime.info.source} fails on a {size}x{size} input: {exc}") from None
    return runtime


def register_model(store: Store, runtime: ModelRuntime) -> ModelVersionRecord:
    """Record the model version; the first model a database ever uses becomes its current model."""
    info = runtime.info
    mv = store.register_model_version(
        version=info.version,
        source=info.source,
        format=info.format,
        task=info.task,
        class_names=info.class_names,
        imgsz=info.imgsz,
        embedding_dim=runtime.embedding_dim,
        digest=info.digest or None,
        weights_path=info.source if Path(info.source).is_file() else None,
    )
    if store.current_model() is None:
        store.set_current(mv.id, note="first model used with this database")
    return mv


def scan(store: Store, settings: Settings, progress: Progress | None = None) -> tuple[PoolSource, int, ScanReport]:
    progress = progress or NullProgress()
    source = resolve_pool(settings.pool.path)
    progress.start(f"scanning {source.location}", None)
    try:
        pool_id, report = scan_pool(
            store,
            source,
            tuple(settings.pool.extensions),
            settings.pool.hash_workers,
            on_progress=lambda done, total: progress.advance(1),
        )
    finally:
        progress.finish()
    for path, reason in report.skipped:
        progress.warn(f"skipped {path}: {reason}")
    if report.files == 0 and not report.skipped:
        kinds = ", ".join(ext.lstrip(".") for ext in settings.pool.extensions)
        what = "lists no files" if source.kind != "directory" else f"has no image files ({kinds})"
        progress.warn(f"the pool {source.location} {what}")
    return source, pool_id, report


def score(
    store: Store,
    settings: Settings,
    *,
    rescore: bool = False,
    progress: Progress | None = None,
    runtime: ModelRuntime | None = None,
) -> ScoreOutcome:
    """Scan the pool and score every item the current model version has not scored yet."""
    progress = progress or NullProgress()
    source, pool_id, scan_report = scan(store, settings, progress)
    runtime = runtime or load_runtime(settings, store)
    mv = register_model(store, runtime)
    todo = store.items_to_score(pool_id, mv.id, rescore=rescore)
    items = [ScoreJob(t.item_id, absolute_path(source.root, t.path), t.width, t.height) for t in todo]
    report = score_items(store, runtime, mv.id, pool_id, items, settings.scoring, settings.pool.max_pixels, progress)
    return ScoreOutcome(source, pool_id, scan_report, mv, str(runtime.device), report)


def select(
    store: Store,
    settings: Settings,
    *,
    budget: int,
    strategy: str | None = None,
    out: Path | None = None,
    rescore: bool = False,
    push: bool = False,
    progress: Progress | None = None,
) -> SelectOutcome:
    """Score what is unscored, select ``budget`` new items, write them to ``out`` and push them to Label Studio.

    With ``push``, Label Studio is checked (reachable, key accepted, project config matching the model) before
    anything is selected, so a bad token or URL records nothing.
    """
    build_strategy(settings.strategy, strategy)  # fail on a bad strategy before spending time on scoring
    ls = None
    if push:
        ls = queue.connect(settings)
    scored = score(store, settings, rescore=rescore, progress=progress)
    project = queue.open_project(store, settings, ls, scored.model) if ls is not None else None
    result = run_selection(
        store,
        scored.pool_id,
        scored.model,
        settings.strategy,
        budget,
        strategy,
        push_to=project.record.id if project is not None else None,
    )
    rows = selection_rows(result, str(scored.pool.root))
    if out is not None:
        write_selection(out, rows)
    outcome = SelectOutcome(scored, result, rows, out)
    if ls is not None:
        report = queue.push(store, settings, ls, scored.model, project=project, progress=progress)
        outcome.extra["push"] = report.summary()
    return outcome


def push(
    store: Store, settings: Settings, *, selection_id: int | None = None, progress: Progress | None = None
) -> queue.PushReport:
    """Push selected items that are not tasks yet (``selection_id``: mark that selection for pushing first)."""
    if selection_id is not None and not store.selection_exists(selection_id):
        raise NothingToSelectError(f"there is no selection #{selection_id} in {store.display_url}")
    ls = queue.connect(settings)
    mv = _model_for_push(store, settings)
    project = queue.open_project(store, settings, ls, mv)
    if selection_id is not None:
        store.mark_selection_for_push(selection_id, project.record.id)
    return queue.push(store, settings, ls, mv, project=project, progress=progress)


def _model_for_push(store: Store, settings: Settings) -> ModelVersionRecord:
    """Pre-annotations come from the model that made the newest selection (or ``model.version``)."""
    if settings.model.version:
        mv = store.model_version(settings.model.version)
        if mv is None:
            raise ModelLoadError(f"model version {settings.model.version!r} is not in {store.display_url}")
        return mv
    latest = store.recent_selections(limit=1)
    if not latest:
        raise NothingToSelectError("nothing to push: no selection yet (run curate select)")
    mv = store.model_version(latest[0]["model_version"])
    if mv is None:  # pragma: no cover - foreign key
        raise ModelLoadError(f"model version {latest[0]['model_version']!r} is missing")
    return mv


def reprioritize(
    store: Store,
    settings: Settings,
    *,
    strategy: str | None = None,
    queue_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    ls: LabelStudioClient | None = None,
) -> tuple[ScoreOutcome, queue.ReprioritizeReport]:
    """Score with the current model, then re-rank the project's queue (topping it up to ``queue_size``)."""
    build_strategy(settings.strategy, strategy)
    ls = ls or queue.connect(settings)
    scored = score(store, settings, progress=progress)
    report = queue.reprioritize(
        store,
        settings,
        ls,
        scored.model,
        scored.pool_id,
        strategy_name=strategy,
        queue_size=queue_size,
        force=force,
        progress=progress,
    )
    return scored, report


def pull(store: Store, settings: Settings, *, progress: Progress | None = None) -> queue.PullReport:
    ls = queue.connect(settings)
    return queue.pull(store, settings, ls, progress=progress)


def ls_init(store: Store, settings: Settings) -> dict[str, Any]:
    """Create the project if needed (config from the model's task and classes) or check it; add local storage."""
    ls = queue.connect(settings)
    runtime = load_runtime(settings, store)
    mv = register_model(store, runtime)
    project = queue.open_project(store, settings, ls, mv)
    storage = queue.ensure_storage(settings, ls, project)
    return {
        "server": ls.url,
        "user": ls.user,
        "project_id": project.record.project_id,
        "project": project.record.title,
        "project_url": project.url,
        "created": project.created,
        "task": mv.task,
        "labels": mv.class_names,
        "model_version": mv.version,
        "local_storage": storage,
    }


def status(store: Store, settings: Settings) -> dict[str, Any]:
    """Counts, model versions, score distribution and recent runs, as plain data."""
    pool_id = None
    pool_location = None
    if settings.pool.path:
        source = resolve_pool(settings.pool.path)
        pool_location = str(source.location)
        pool_id = store.find_pool(pool_location)
    versions = store.model_versions()
    runs = store.recent_runs()
    current: ModelVersionRecord | None = None
    if settings.model.version:
        current = store.model_version(settings.model.version)
    else:
        current = store.current_model()
        if current is None and runs:
            current = store.model_version(runs[0]["model_version"])
    counts = store.status_counts(pool_id, current.id if current else None)
    distribution = None
    if current is not None and pool_id is not None:
        strategy = build_strategy(settings.strategy)
        measure = strategy.measure or FALLBACK_MEASURE
        cands = candidate_uncertainty(store, pool_id, current, measure, settings.strategy.detection)
        values = cands.uncertainty[~np.isnan(cands.uncertainty)]
        if len(values):
            qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
            hist, edges = np.histogram(values, bins=10)
            distribution = {
                "measure": measure,
                "candidates": len(values),
                "quantiles": dict(zip(["min", "p25", "median", "p75", "p90", "max"], map(float, qs), strict=True)),
                "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
            }
    return {
        "database": store.display_url,
        "pool": pool_location,
        "counts": counts,
        "current_model_version": current.version if current else None,
        "model_versions": [
            {
                "version": mv.version,
                "task": mv.task,
                "classes": len(mv.class_names),
                "predictions": n,
                "source": mv.source,
                "created_at": mv.created_at.isoformat(),
            }
            for mv, n in versions
        ],
        "score_distribution": distribution,
        "recent_runs": [
            {**r, "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"])} for r in runs
        ],
        "recent_selections": [{**s, "created_at": _iso(s["created_at"])} for s in store.recent_selections()],
        "failures": [{"path": p, "reason": r} for p, r in store.failures(pool_id, limit=20)],
    }


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------------------------------------------------------------
# Runs that change the database hold the run lock; training, the registry, and the loop


def run_lock(store: Store) -> RunLock:
    """The per-database run lock (see ``store.lock``): a second run exits at once with who holds it."""
    return RunLock(store)


def _current_or_fail(store: Store) -> ModelVersionRecord:
    current = store.current_model()
    if current is None:
        raise ModelLoadError("the registry has no current model yet: run curate score or select with --model first")
    return current


def train(store: Store, settings: Settings, *, progress: Progress | None = None) -> TrainReport:
    """Fine-tune the current model (or ``--model``'s version) on the labeled items; promote only if better."""
    if settings.model.path:
        runtime = load_runtime(settings, store)
        base = register_model(store, runtime)
    else:
        base = _current_or_fail(store)
    return train_round(store, settings, base, progress=progress)


def models(store: Store) -> dict[str, Any]:
    current = store.current_model()
    return {
        "current": current.version if current else None,
        "versions": [_describe_version(mv, n, store) for mv, n in store.model_versions()],
    }


def model_detail(store: Store, version: str | None) -> dict[str, Any]:
    mv = store.model_version(version) if version else store.current_model()
    if mv is None:
        raise ModelLoadError(
            f"no model version {version!r} in {store.display_url}"
            if version
            else "the registry has no current model yet"
        )
    counts = {m.version: n for m, n in store.model_versions()}
    return _describe_version(mv, counts.get(mv.version, 0), store) | {
        "class_names": mv.class_names,
        "metrics": mv.metrics,
    }


def promote(store: Store, version: str) -> dict[str, Any]:
    mv = store.model_version(version)
    if mv is None:
        raise ModelLoadError(f"no model version {version!r} in {store.display_url}")
    if mv.weights_path and not Path(mv.weights_path).is_file():
        raise ModelLoadError(f"the weights of {version} are missing: {mv.weights_path}")
    previous = store.current_model()
    store.set_current(mv.id, note="promoted by hand")
    return {"current": mv.version, "previous": previous.version if previous else None}


def _describe_version(mv: ModelVersionRecord, predictions: int, store: Store) -> dict[str, Any]:
    parent = store.model_version_by_id(mv.parent_id) if mv.parent_id else None
    return {
        "version": mv.version,
        "status": mv.status,
        "task": mv.task,
        "classes": len(mv.class_names),
        "parent": parent.version if parent else None,
        "metric": mv.metric_name,
        "value": mv.metric_value,
        "n_labeled": mv.n_labeled,
        "dataset_hash": mv.dataset_hash,
        "weights": mv.weights_path or mv.source,
        "trained_at": _iso(mv.trained_at),
        "created_at": _iso(mv.created_at),
        "predictions": predictions,
        "note": mv.note,
    }


@dataclass
class LoopReport:
    pulled: dict[str, Any] | None = None
    new_labels: int = 0
    training: dict[str, Any] | None = None
    current_model: str | None = None
    scoring: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    training_error: str | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "pulled": self.pulled,
            "training_error": self.training_error,
            "new_labels": self.new_labels,
            "training": self.training,
            "current_model": self.current_model,
            "scoring": self.scoring,
            "queue": self.queue,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def loop(
    store: Store,
    settings: Settings,
    *,
    min_new_labels: int | None = None,
    queue_size: int | None = None,
    strategy: str | None = None,
    progress: Progress | None = None,
) -> LoopReport:
    """One turn of the cycle, for cron: pull → train if enough new labels → promote if better → rescore with the
    current model → reprioritize and top up the queue."""
    import time

    started = time.perf_counter()
    report = LoopReport()
    ls = queue.connect(settings)
    if settings.model.path:
        existing = store.current_model()
        if existing is None:
            register_model(store, load_runtime(settings, store))  # first run: the configured model becomes current
        elif Path(settings.model.path).resolve() != Path(existing.source).resolve():
            report.notes.append(
                f"model.path {settings.model.path} only seeds an empty registry: the loop follows the current "
                f"model {existing.version} (`curate models promote` changes it)"
            )
    # the loop always follows the registry: a promoted model takes over the queue from the next step on
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"path": None, "version": None})})
    try:
        report.pulled = queue.pull(store, settings, ls, progress=progress).summary()
    except ProjectNotFoundError as exc:
        report.notes.append(f"nothing pulled: {exc}")
    current = store.current_model()
    threshold = settings.train.min_new_labels if min_new_labels is None else min_new_labels
    labeled = len(store.labeled_examples(current.task)) if current else 0
    last = store.latest_trained()
    baseline = last.n_labeled or 0 if last else 0
    report.new_labels = labeled - baseline
    if current is not None and report.new_labels >= max(threshold, 1):
        try:
            outcome = train_round(store, settings, current, progress=progress)
        except TrainingError as exc:
            # The queue must still follow the current model: note the failure, finish the turn, and let the CLI
            # exit non-zero so that cron reports it.
            report.training_error = str(exc)
        else:
            report.training = outcome.summary()
            if not outcome.trained:
                report.notes.append(f"not trained: {outcome.reason}")
    elif current is not None:
        report.notes.append(f"not trained: {report.new_labels} new label(s), {threshold} needed")
    checkpoint("loop-before-rescore")
    scored, ranked = reprioritize(store, settings, strategy=strategy, queue_size=queue_size, progress=progress, ls=ls)
    report.current_model = scored.model.version
    report.scoring = scored.summary()
    report.queue = ranked.summary()
    report.seconds = time.perf_counter() - started
    return report
