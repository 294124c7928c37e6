"""``curate push``, ``reprioritize`` and ``ls init``: put the selection into Label Studio and keep its order."""

from __future__ import annotations

from typing import Any

from curation.config import Settings
from curation.errors import ModelLoadError, NothingToSelectError, UnknownReferenceError
from curation.jobs.model import load_runtime, register_model
from curation.jobs.score import ScanAhead, ScoreOutcome, score, with_pool_project
from curation.labelstudio import push as push_module
from curation.labelstudio import reprioritize as reprioritize_module
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.project import connect, ensure_prelabeling, ensure_storage, find_project, open_project
from curation.progress import Progress
from curation.selection import build_strategy
from store import Store
from store.records import ModelVersionRecord


def rank_queue(
    store: Store,
    ls: LabelStudioAPI,
    scored: ScoreOutcome,
    settings: Settings,
    *,
    queue_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> reprioritize_module.ReprioritizeReport:
    """Re-rank the project's queue with the scores ``scored`` just brought up to date, under ``settings``' one
    reading of the pool, strategy, S3 and new-class keys (``reprioritize``, ``loop`` and ``select`` on an
    ``ls://`` pool)."""
    return reprioritize_module.reprioritize(
        store,
        ls,
        scored.model,
        scored.pool_id,
        settings.label_studio,
        settings.strategy,
        pool_path=settings.pool.path,
        queue_size=queue_size,
        force=force,
        progress=progress,
        s3=settings.pool.s3,
        add_labels=settings.train.allow_new_classes,
        encoder=scored.encoder,
    )


def push(
    store: Store, settings: Settings, *, selection_id: int | None = None, progress: Progress | None = None
) -> push_module.PushReport:
    """Push selected items that are not tasks yet (``selection_id``: mark that selection for pushing first)."""
    if selection_id is not None and not store.selections.exists(selection_id):
        raise UnknownReferenceError(f"there is no selection #{selection_id} in {store.display_url}")
    ls = connect(settings.label_studio)
    mv = _model_for_push(store, settings)
    project = open_project(store, ls, mv, settings.label_studio.project, add_labels=settings.train.allow_new_classes)
    if selection_id is not None:
        store.selections.mark_for_push(selection_id, project.record.id)
    return push_module.push_with(store, ls, mv, project, settings, progress)


def _model_for_push(store: Store, settings: Settings) -> ModelVersionRecord:
    """Pre-annotations come from the model that made the newest selection (or ``model.version``)."""
    if settings.model.version:
        mv = store.models.get(settings.model.version)
        if mv is None:
            raise UnknownReferenceError(f"model version {settings.model.version!r} is not in {store.display_url}")
        return mv
    latest = store.selections.recent(limit=1)
    if not latest:
        raise NothingToSelectError("nothing to push: no selection yet (run curate select)")
    mv = store.models.get(latest[0]["model_version"])
    if mv is None:  # pragma: no cover - foreign key
        raise ModelLoadError(f"model version {latest[0]['model_version']!r} is missing")
    return mv


def reprioritize(
    store: Store,
    settings: Settings,
    *,
    queue_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    ls: LabelStudioAPI | None = None,
    scanned: ScanAhead | None = None,
) -> tuple[ScoreOutcome, reprioritize_module.ReprioritizeReport]:
    """Score with the current model, then re-rank the project's queue (topping it up to ``queue_size``).

    Without a pool (``--pool`` / ``pool.path``) it uses the pools this database selected for the project from:
    each is scored, and the queue is topped up from the most recent one. ``scanned``: the pool's scan, already
    started (``loop``)."""
    build_strategy(settings.strategy)  # fail on a bad strategy before spending time on scoring
    settings = with_pool_project(settings)
    ls = ls or connect(settings.label_studio)
    if settings.pool.path:
        scored = score(store, settings, progress=progress, scanned=scanned)
    else:
        pools = _project_pools(store, ls, settings)
        if not pools:
            scored = score(store, settings, progress=progress)  # fails: no pool given
        for location in reversed(pools):  # the newest last: its outcome is the one reported and topped up from
            settings = settings.model_copy(update={"pool": settings.pool.model_copy(update={"path": location})})
            scored = score(store, settings, progress=progress)
    report = rank_queue(store, ls, scored, settings, queue_size=queue_size, force=force, progress=progress)
    current = store.models.current()
    if current is not None and current.id != scored.model.id:
        report.model_note = (
            f"ranked with {scored.model.version}, which is not the current model ({current.version}): the next "
            f"reprioritize without --model ranks with {current.version} again; "
            f"`curate models promote {scored.model.version}` makes the switch stick"
        )
    return scored, report


def _project_pools(store: Store, ls: LabelStudioAPI, settings: Settings) -> list[str]:
    """The pools this database selected for the project from (none for a project it does not know)."""
    name = settings.label_studio.project
    remote = find_project(ls, name) if name else None
    if remote is None:
        return []
    records = [p for p in store.label_studio.projects() if p.server == ls.url and p.project_id == int(remote["id"])]
    return store.label_studio.pools(records[0].id) if records else []


def ls_init(store: Store, settings: Settings) -> dict[str, Any]:
    """Create the project if needed (config from the model's task and classes) or check it; add local storage."""
    ls = connect(settings.label_studio)
    runtime = load_runtime(settings, store)
    mv = register_model(store, runtime)
    project = open_project(store, ls, mv, settings.label_studio.project, add_labels=settings.train.allow_new_classes)
    storage = ensure_storage(ls, project, settings.label_studio, settings.pool.path, settings.pool.s3)
    prelabeling_changed = ensure_prelabeling(ls, project, settings.label_studio.preannotate)
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
        "preannotate": settings.label_studio.preannotate,
        "preannotate_changed": prelabeling_changed,
    }
