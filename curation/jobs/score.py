"""``curate score``: scan the pool, then score every item the model version has not scored yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.config import Settings
from curation.jobs.model import load_runtime, register_model, registered_model
from curation.progress import NullProgress, Progress
from curation.scoring.pool import PoolSource, ScanReport, absolute_path, resolve_pool, scan_pool
from curation.scoring.summary import ScoringReport
from store import Store
from store.records import ModelVersionRecord

if TYPE_CHECKING:
    from curation.objects.source import ObjectSource
    from curation.scoring.object_pool import ObjectPool
    from curation.scoring.runtime import ModelRuntime


@dataclass
class ScoreOutcome:
    pool: PoolSource | ObjectPool
    pool_id: int
    scan: ScanReport
    model: ModelVersionRecord
    device: str | None  # None: nothing to score, so the model was never loaded
    scoring: ScoringReport
    runtime: str | None = None  # what ran the forward pass (scoring.runtime resolved); None: nothing scored

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
            "runtime": self.runtime,
            "scored": self.scoring.scored,
            "failed": self.scoring.failed,
            "retry_later": self.scoring.retry_later,
            "invalid": self.scoring.invalid,
            "already_scored": self.scan.files - self.scan.duplicate_paths - self.scoring.todo,
            "seconds": round(self.scoring.seconds, 3),
            "images_per_s": round(self.scoring.images_per_s, 2),
            "failures": [{"path": p, "reason": r} for p, r in self.scoring.failures],
        }


def objects_for(source: PoolSource | ObjectPool, settings: Settings) -> ObjectSource | None:
    """The object source that reads an object-store pool's items (None for local pools)."""
    if source.kind != "s3":
        return None
    from curation.scoring.object_pool import ObjectPool, object_source

    return object_source(source, settings.pool.s3) if isinstance(source, ObjectPool) else None


def scan(
    store: Store, settings: Settings, progress: Progress | None = None, objects: ObjectSource | None = None
) -> tuple[PoolSource | ObjectPool, int, ScanReport]:
    """Scan the configured pool. ``objects``: the object source to read an object-store pool through (default:
    S3 with the configured credentials)."""
    progress = progress or NullProgress()
    source = resolve_pool(settings.pool.path)
    progress.start(f"scanning {source.location}", None)
    try:
        if isinstance(source, PoolSource):
            pool_id, report = scan_pool(
                store,
                source,
                tuple(settings.pool.extensions),
                settings.pool.hash_workers,
                on_progress=lambda done, total: progress.advance(1),
                allow_outside_root=settings.pool.allow_outside_root,
                max_pixels=settings.pool.max_pixels,
            )
        else:
            from curation.scoring.object_pool import scan_object_pool

            pool_id, report = scan_object_pool(
                store,
                source,
                objects or object_source_required(source, settings),
                tuple(settings.pool.extensions),
                on_progress=lambda done, total: progress.advance(1),
                max_pixels=settings.pool.max_pixels,
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
    objects: ObjectSource | None = None,
) -> ScoreOutcome:
    """Scan the pool and score every item the current model version has not scored yet.

    When the registry already knows the model and every item has its score, the model is never loaded (nor torch
    imported): an idle cron turn costs a pool scan and a few queries."""
    progress = progress or NullProgress()
    objects = objects or objects_for(resolve_pool(settings.pool.path), settings)
    source, pool_id, scan_report = scan(store, settings, progress, objects)
    if runtime is None and not rescore:
        known = registered_model(settings, store)
        if known is not None and not store.items.any_to_score(pool_id, known.id):
            return ScoreOutcome(source, pool_id, scan_report, known, None, ScoringReport())
    from curation.scoring.engine import ScoreJob, score_items

    runtime = runtime or load_runtime(settings, store)
    mv = register_model(store, runtime)
    todo = store.items.to_score(pool_id, mv.id, rescore=rescore)
    if isinstance(source, PoolSource):
        items = [ScoreJob(t.item_id, absolute_path(source.root, t.path), t.width, t.height) for t in todo]
    else:
        items = [ScoreJob(t.item_id, source.key(t.path), t.width, t.height, t.content_id) for t in todo]
    report = score_items(
        store,
        runtime,
        mv.id,
        pool_id,
        items,
        settings.scoring,
        settings.pool.max_pixels,
        progress,
        max_aspect=settings.pool.max_aspect_ratio,
        objects=objects,
    )
    return ScoreOutcome(source, pool_id, scan_report, mv, str(runtime.device), report, runtime.name)


def object_source_required(source: ObjectPool, settings: Settings) -> ObjectSource:
    from curation.scoring.object_pool import object_source

    return object_source(source, settings.pool.s3)
