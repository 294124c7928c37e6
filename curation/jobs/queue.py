"""``curate push``, ``reprioritize`` and ``ls init``: put the selection into Label Studio and keep its order."""

from __future__ import annotations

from typing import Any

from curation.config import Settings
from curation.errors import ModelLoadError, NothingToSelectError
from curation.jobs.model import load_runtime, register_model
from curation.jobs.score import ScoreOutcome, score
from curation.labelstudio import queue
from curation.labelstudio.client import LabelStudioClient
from curation.progress import Progress
from curation.selection import build_strategy
from store import Store
from store.records import ModelVersionRecord


def push(
    store: Store, settings: Settings, *, selection_id: int | None = None, progress: Progress | None = None
) -> queue.PushReport:
    """Push selected items that are not tasks yet (``selection_id``: mark that selection for pushing first)."""
    if selection_id is not None and not store.selections.exists(selection_id):
        raise NothingToSelectError(f"there is no selection #{selection_id} in {store.display_url}")
    ls = queue.connect(settings)
    mv = _model_for_push(store, settings)
    project = queue.open_project(store, settings, ls, mv)
    if selection_id is not None:
        store.selections.mark_for_push(selection_id, project.record.id)
    return queue.push(store, settings, ls, mv, project=project, progress=progress)


def _model_for_push(store: Store, settings: Settings) -> ModelVersionRecord:
    """Pre-annotations come from the model that made the newest selection (or ``model.version``)."""
    if settings.model.version:
        mv = store.models.get(settings.model.version)
        if mv is None:
            raise ModelLoadError(f"model version {settings.model.version!r} is not in {store.display_url}")
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
