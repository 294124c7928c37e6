"""``curate score``: scan the pool, then score every item the model version has not scored yet."""

from __future__ import annotations

import contextlib
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.config import Settings
from curation.errors import ConfigError, PoolError
from curation.jobs.model import load_runtime, register_model, registered_model
from curation.progress import NullProgress, Progress
from curation.scoring.pool import (
    LabelStudioPool,
    PoolSource,
    ScanReport,
    absolute_path,
    is_remote,
    resolve_pool,
    scan_pool,
)
from curation.scoring.summary import EmbeddingReport, ScoringReport
from store import Store
from store.records import ModelVersionRecord

if TYPE_CHECKING:
    from curation.labelstudio.pool import TaskImages
    from curation.objects.source import ObjectSource
    from curation.objects.uris import UriReader
    from curation.scoring.object_pool import ObjectPool
    from curation.scoring.runtime import ModelRuntime


@dataclass
class ScoreOutcome:
    pool: PoolSource | ObjectPool | LabelStudioPool
    pool_id: int
    scan: ScanReport
    model: ModelVersionRecord
    device: str | None  # None: nothing to score, so the model was never loaded
    scoring: ScoringReport
    runtime: str | None = None  # what ran the forward pass (scoring.runtime resolved); None: nothing scored
    engine: str = "local"  # scoring.engine
    tasks: dict[str, Any] | None = None  # ls:// pools: what the scan linked (see ``curation.labelstudio.pool``)
    embedding: EmbeddingReport | None = None  # the image encoder's part (``embedding.model``); None: not set

    @property
    def encoder(self) -> ModelVersionRecord | None:
        """The image encoder whose embeddings selection uses instead of the model's (None: the model's)."""
        return self.embedding.model if self.embedding is not None else None

    def summary(self) -> dict[str, Any]:
        more: dict[str, Any] = {"tasks": self.tasks} if self.tasks is not None else {}
        if self.embedding is not None:
            more["embedding"] = self.embedding.summary()
        return {
            **more,
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
            "engine": self.engine,
            "ray_nodes": len(self.scoring.nodes) if self.engine == "ray" else None,
        }


def is_ls_pool(settings: Settings) -> bool:
    return isinstance(settings.pool.path, str) and settings.pool.path.strip()[:5].lower() == "ls://"


def with_pool_project(settings: Settings) -> Settings:
    """``--pool ls://<project>`` names the project to rank: it becomes ``label_studio.project`` (an explicit
    ``--project`` must name the same one, by the same title or id)."""
    source = resolve_pool(settings.pool.path) if is_ls_pool(settings) else None
    if not isinstance(source, LabelStudioPool):
        return settings
    named = settings.label_studio.project
    if named and named != source.project:
        raise ConfigError(
            f"--project {named!r} and --pool {source.location} name different projects: an ls:// pool is ranked in "
            "its own project (leave --project out)"
        )
    cfg = settings.label_studio.model_copy(update={"project": source.project})
    return settings.model_copy(update={"label_studio": cfg})


def objects_for(
    source: PoolSource | ObjectPool | LabelStudioPool, settings: Settings
) -> ObjectSource | UriReader | TaskImages | None:
    """What reads a pool's items when they are not (only) local files: the S3 source of an object-store pool,
    the task-image reader of an ``ls://`` pool (connects to Label Studio), the URI reader of a manifest (its
    ``s3://``/``https://`` lines); None for a directory."""
    if isinstance(source, LabelStudioPool):
        from curation.labelstudio.pool import task_images
        from curation.labelstudio.project import connect

        return task_images(connect(settings.label_studio), settings.pool)
    if source.kind == "manifest":
        from curation.objects.uris import uri_reader

        return uri_reader(settings.pool)
    if source.kind != "s3":
        return None
    from curation.scoring.object_pool import ObjectPool, object_source

    return object_source(source, settings.pool.s3) if isinstance(source, ObjectPool) else None


def scan(
    store: Store, settings: Settings, progress: Progress | None = None, objects: Any = None
) -> tuple[PoolSource | ObjectPool | LabelStudioPool, int, ScanReport]:
    """Scan the configured pool. ``objects``: what reads the items (``objects_for``; default: made here)."""
    source, pool_id, report, _ = _scan(store, settings, progress, objects)
    return source, pool_id, report


def _scan(
    store: Store, settings: Settings, progress: Progress | None, objects: Any
) -> tuple[PoolSource | ObjectPool | LabelStudioPool, int, ScanReport, dict[str, Any] | None]:
    progress = progress or NullProgress()
    scanned = _scan_quietly(store, settings, progress, objects)
    _warn_about(scanned[0], scanned[2], settings, progress)
    return scanned


def _scan_quietly(
    store: Store, settings: Settings, progress: Progress, objects: Any
) -> tuple[PoolSource | ObjectPool | LabelStudioPool, int, ScanReport, dict[str, Any] | None]:
    source = resolve_pool(settings.pool.path)
    if objects is None:
        objects = objects_for(source, settings)
    tasks: dict[str, Any] | None = None
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
                remote=objects if source.kind == "manifest" else None,
            )
        elif isinstance(source, LabelStudioPool):
            pool_id, report, tasks = _scan_label_studio(store, source, objects, settings, progress)
        else:
            from curation.scoring.object_pool import scan_object_pool

            pool_id, report = scan_object_pool(
                store,
                source,
                objects,
                tuple(settings.pool.extensions),
                on_progress=lambda done, total: progress.advance(1),
                max_pixels=settings.pool.max_pixels,
            )
    finally:
        progress.finish()
    return source, pool_id, report, tasks


def _warn_about(
    source: PoolSource | ObjectPool | LabelStudioPool, report: ScanReport, settings: Settings, progress: Progress
) -> None:
    for path, reason in report.skipped:
        progress.warn(f"skipped {path}: {reason}")
    if report.files == 0 and not report.skipped:
        kinds = ", ".join(ext.lstrip(".") for ext in settings.pool.extensions)
        what = "lists no files" if source.kind != "directory" else f"has no image files ({kinds})"
        progress.warn(f"the pool {source.location} {what}")


class ScanAhead:
    """A local pool's scan started in a thread before it is needed: ``loop`` scans while Label Studio answers
    the pull (the scan is this process's work, the pull mostly the server's), instead of one after the other.
    ``score(scanned=...)`` takes the result; the skipped-file warnings are printed then, in the caller's thread.
    Only directories and manifests are scanned ahead, with the local engine (``applies`` says when)."""

    def __init__(self, store: Store, settings: Settings, executor: Executor) -> None:
        self.location = settings.pool.path
        self._future = executor.submit(_scan_quietly, store, settings, NullProgress(), None)

    @staticmethod
    def applies(settings: Settings) -> bool:
        """Whether the configured pool is one ``ScanAhead`` scans (a local directory or manifest, local engine)."""
        if settings.scoring.engine != "local" or not settings.pool.path:
            return False
        try:
            return isinstance(resolve_pool(settings.pool.path), PoolSource)
        except PoolError:
            return False  # reported where the pool is scanned, as without a scan ahead

    def result(self) -> tuple[PoolSource | ObjectPool | LabelStudioPool, int, ScanReport, dict[str, Any] | None]:
        """The scan's outcome; its error, if it failed (raised here, where the scan would have run)."""
        return self._future.result()


def _scan_label_studio(
    store: Store, source: LabelStudioPool, images: TaskImages, settings: Settings, progress: Progress
) -> tuple[int, ScanReport, dict[str, Any]]:
    """Scan an ``ls://`` pool, then pull the annotations the newly linked tasks already have (they count as
    labeled from now on)."""
    from curation.labelstudio.pool import scan_ls_pool
    from curation.labelstudio.project import known_project
    from curation.labelstudio.pull import pull_tasks

    pool_id, report, links = scan_ls_pool(
        store,
        source,
        images.ls,
        images,
        on_progress=lambda done, total: progress.advance(1),
        max_pixels=settings.pool.max_pixels,
    )
    labeled = 0
    if links.annotated_new:
        project = known_project(store, images.ls, str(links.project_id))
        labeled = pull_tasks(store, images.ls, project, links.annotated_new).labeled_tasks
    if links.duplicate_tasks:
        progress.warn(
            f"{len(links.duplicate_tasks)} task(s) of project {links.title} show an image another task shows too: "
            "only the first one is ranked (task ids in tasks.duplicate_tasks)"
        )
    return (
        pool_id,
        report,
        {
            "project_id": links.project_id,
            "project": links.title,
            "linked": links.linked,
            "already_labeled": labeled,
            "deleted": links.deleted,
            "duplicate_tasks": links.duplicate_tasks,
        },
    )


def score(
    store: Store,
    settings: Settings,
    *,
    rescore: bool = False,
    progress: Progress | None = None,
    runtime: ModelRuntime | None = None,
    objects: Any = None,
    scanned: ScanAhead | None = None,
) -> ScoreOutcome:
    """Scan the pool and score every item the current model version has not scored yet. ``scanned``: the pool's
    scan, already started (``ScanAhead``), used instead of scanning again when it is of the same pool.

    When the registry already knows the model and every item has its score, the model is never loaded (nor torch
    imported): an idle cron turn costs a pool scan and a few queries."""
    progress = progress or NullProgress()
    engine = settings.scoring.engine
    if engine == "ray":
        from curation.scoring.ray_engine import require_ray

        require_ray()  # before the scan: a missing extra is a usage error, found at once
    source = resolve_pool(settings.pool.path)
    if engine == "ray" and isinstance(source, LabelStudioPool):
        raise ConfigError(
            f"scoring.engine ray scores directories, manifests and s3:// pools; {source.location} is scored with "
            "the local engine (--engine local)"
        )
    if scanned is not None and scanned.location == settings.pool.path:
        source, pool_id, scan_report, tasks = scanned.result()
        _warn_about(source, scan_report, settings, progress)
        objects = objects or objects_for(source, settings)
    else:
        objects = objects or objects_for(source, settings)
        source, pool_id, scan_report, tasks = _scan(store, settings, progress, objects)
    if runtime is None and not rescore:
        known = registered_model(settings, store)
        if known is not None and not store.items.any_to_score(pool_id, known.id):
            idle = ScoreOutcome(source, pool_id, scan_report, known, None, ScoringReport(), engine=engine, tasks=tasks)
            return _with_embeddings(store, settings, idle, objects, progress)
    from curation.scoring.engine import score_items

    if engine == "ray" and runtime is None:
        scored = _score_on_ray(store, settings, source, pool_id, scan_report, rescore, progress, objects, tasks)
        return _with_embeddings(store, settings, scored, objects, progress)
    runtime = runtime or load_runtime(settings, store)
    mv = register_model(store, runtime)
    items, readers = _jobs(source, store.items.to_score(pool_id, mv.id, rescore=rescore), objects)
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
        objects=readers,
    )
    outcome = ScoreOutcome(source, pool_id, scan_report, mv, str(runtime.device), report, runtime.name, tasks=tasks)
    return _with_embeddings(store, settings, outcome, objects, progress)


def _with_embeddings(
    store: Store, settings: Settings, outcome: ScoreOutcome, objects: Any, progress: Progress
) -> ScoreOutcome:
    """After the model's scoring: the image encoder's embeddings (``embedding.model``) of every readable item
    that lacks one, read through the same ``objects``."""
    from curation.jobs.embed import embed_pool

    outcome.embedding = embed_pool(
        store, settings, outcome.pool_id, lambda todo: _jobs(outcome.pool, todo, objects), progress
    )
    return outcome


def _jobs(source: PoolSource | ObjectPool | LabelStudioPool, todo: list[Any], objects: Any) -> tuple[list[Any], Any]:
    """What to score, as the engines read it, and the object source they read it through (None: local files only,
    decoded from disk by the workers)."""
    from curation.scoring.engine import ScoreJob

    if not isinstance(source, PoolSource):
        return [ScoreJob(t.item_id, source.key(t.path), t.width, t.height, t.content_id) for t in todo], objects
    items = [
        ScoreJob(t.item_id, t.path if is_remote(t.path) else absolute_path(source.root, t.path), t.width, t.height)
        for t in todo
    ]
    if source.kind == "manifest" and any(is_remote(t.path) for t in todo):
        return [ScoreJob(j.item_id, str(j.path), j.width, j.height) for j in items], objects  # the URI reader
    return items, None


def _score_on_ray(
    store: Store,
    settings: Settings,
    source: PoolSource | ObjectPool | LabelStudioPool,
    pool_id: int,
    scan_report: ScanReport,
    rescore: bool,
    progress: Progress,
    objects: ObjectSource | None,
    tasks: dict[str, Any] | None,
) -> ScoreOutcome:
    """``scoring.engine: ray``. This process loads the model once on its CPU (to learn its version and register
    it, exactly as the local engine would); the actors load the same file and check its digest. When there is
    likely work (``_likely_work``), Ray starts (``ray.init``: seconds of process start-up) while this process
    loads its copy of the model, instead of after it."""
    from concurrent.futures import ThreadPoolExecutor

    from curation.jobs.model import model_settings
    from curation.scoring.ray_engine import ray_cluster, score_items_ray

    here = settings.model_copy(
        update={"scoring": settings.scoring.model_copy(update={"device": "cpu", "runtime": "torch"})}
    )
    ahead = _likely_work(store, settings, pool_id, rescore)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-model") as executor:
        # the load runs in a thread so that ray.init keeps the main thread (where Ray installs its handlers)
        loading = executor.submit(load_runtime, here, store)
        with ray_cluster(settings.scoring.ray.address) if ahead else contextlib.nullcontext():
            runtime = loading.result()
            mv = register_model(store, runtime)
            chosen = model_settings(settings, store).model_copy(update={"version": mv.version})
            items, objects = _jobs(source, store.items.to_score(pool_id, mv.id, rescore=rescore), objects)
            with contextlib.nullcontext() if ahead or not items else ray_cluster(settings.scoring.ray.address):
                report = score_items_ray(
                    store,
                    runtime.info,
                    mv.id,
                    pool_id,
                    items,
                    settings.model_copy(update={"model": chosen}),
                    progress,
                    objects=objects,
                )
    return ScoreOutcome(
        source, pool_id, scan_report, mv, report.device, report, settings.scoring.runtime, engine="ray", tasks=tasks
    )


def _likely_work(store: Store, settings: Settings, pool_id: int, rescore: bool) -> bool:
    """Whether to start Ray before the model is loaded: not when the newest version registered from this model
    file has already scored the whole pool (a rerun with nothing to do then costs no Ray start-up). Only a guess:
    when wrong (the file was rewritten), Ray simply starts after the load, as it would without the guess."""
    if rescore:
        return True
    known = registered_model(settings, store)
    if known is None and settings.model.path:
        path = Path(settings.model.path)
        known = store.models.latest_from(str(path.resolve()) if path.is_file() else settings.model.path)
    return known is None or store.items.any_to_score(pool_id, known.id)


def object_source_required(source: ObjectPool, settings: Settings) -> ObjectSource:
    from curation.scoring.object_pool import object_source

    return object_source(source, settings.pool.s3)
