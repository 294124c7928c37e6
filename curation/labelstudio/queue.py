"""Keeping a Label Studio project's queue in curate's order: push, reprioritize, pull.

The queue contract (open-source Label Studio): with sampling "Uncertainty sampling", the label stream serves the
task whose prediction — among predictions whose ``model_version`` equals the project's ``model_version`` — has
the lowest ``score``. curate therefore writes one prediction per queued task under a ranking tag
(``curate-<model version>-<UTC time>``) with ``score`` = queue position / 1,000,000 (lowest = served next), switches the
project to that tag, and deletes its older tags so that the Data Manager's score column stays true.

Idempotency: every import is preceded by an intent record; tasks are recorded with the intent's removal in one
transaction. An intent found later (killed process, proxy error after the server committed) is resolved by
looking the items up by ``curation_id`` in Label Studio before anything is imported again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from curation.config import Settings
from curation.errors import (
    ConfigError,
    LabelStudioError,
    NothingToSelectError,
    ProjectNotFoundError,
    UnservableImageError,
)
from curation.faults import checkpoint
from curation.labelstudio.client import ImportOutcomeUnknown, LabelStudioClient, parse_ls_time, watermark_with_margin
from curation.labelstudio.formats import (
    LabelingInterface,
    check_label_config,
    image_url,
    label_config,
    normalize_annotation,
    prediction_result,
)
from curation.progress import NullProgress, Progress
from curation.scoring.pool import absolute_path
from curation.selection import FALLBACK_MEASURE, build_strategy, items_uncertainty, pool_view, run_selection
from store import Store
from store.records import (
    LSProjectRecord,
    ModelVersionRecord,
    PendingItem,
    PulledAnnotation,
    QueuedTask,
    StoredPrediction,
)
from strategies import Strategy

TAG_PREFIX = "curate-"
CLUSTER_REQUESTS = 4  # concurrent cluster PATCHes: ~1.7x faster against a 2-core server, more on larger ones


def connect(settings: Settings) -> LabelStudioClient:
    """A client whose server answered and accepted the key: a bad URL or token fails here, before any work."""
    cfg = settings.label_studio
    if not cfg.url:
        raise ConfigError("no Label Studio URL: set LABEL_STUDIO_URL (or label_studio.url)")
    key = cfg.api_key.get_secret_value() if cfg.api_key else ""
    client = LabelStudioClient(cfg.url, key, timeout=cfg.timeout)
    client.whoami()
    return client


@dataclass
class ProjectHandle:
    record: LSProjectRecord
    ui: LabelingInterface
    remote: dict[str, Any]
    created: bool = False

    @property
    def url(self) -> str:
        return f"{self.record.server}/projects/{self.record.project_id}"


def open_project(
    store: Store, settings: Settings, ls: LabelStudioClient, mv: ModelVersionRecord, *, create: bool = True
) -> ProjectHandle:
    """Find (or create) the configured project and check its labeling config against the model's classes."""
    name = settings.label_studio.project
    if not name:
        raise ConfigError("no Label Studio project: pass --project NAME_OR_ID (or set label_studio.project)")
    remote = ls.find_project(name)
    created = False
    if remote is None:
        if not create or name.isdigit():
            raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {name!r}")
        remote = ls.create_project(
            name, label_config(mv.task, mv.class_names), description="Queue ordered by curate (active learning)."
        )
        created = True
    ui = check_label_config(remote.get("parsed_label_config") or {}, mv.task, mv.class_names)
    record = store.label_studio.project(ls.url, int(remote["id"]), str(remote.get("title", name)), mv.task)
    return ProjectHandle(record, ui, remote, created)


# --------------------------------------------------------------------------------------------------------------------
# Reconciliation


def reconcile(store: Store, ls: LabelStudioClient, project: ProjectHandle) -> int:
    """Resolve imports whose outcome is unknown, and adopt curate tasks this database does not know yet.

    Returns the number of tasks found in Label Studio and recorded here (no task is ever imported twice).
    """
    pid = project.record.project_id
    adopted = 0
    for intent_id, content_ids in store.label_studio.intents(project.record.id):
        adopted += _record_found(store, project, ls.tasks_by_curation_id(pid, content_ids), intent_id)
    if store.label_studio.count_tasks(project.record.id) == 0 and int(project.remote.get("task_number") or 0) > 0:
        adopted += _record_found(store, project, ls.all_curate_tasks(pid), None)
    return adopted


def _record_found(store: Store, project: ProjectHandle, found: dict[str, list[int]], intent_id: int | None) -> int:
    items = store.items.by_content(sorted(found))
    rows = [
        {"item_id": items[cid], "task_id": min(task_ids), "position": None, "cluster": None, "selection_id": None}
        for cid, task_ids in found.items()
        if cid in items
    ]
    return store.label_studio.record_tasks(project.record.id, rows, intent_id)


# --------------------------------------------------------------------------------------------------------------------
# Push


@dataclass
class PushReport:
    project_id: int
    project_title: str
    project_url: str
    created_project: bool
    pushed: int = 0
    reconciled: int = 0
    missing_files: list[str] = field(default_factory=list)
    tag: str | None = None
    queue_size: int = 0
    first: dict[str, Any] | None = None
    served_after_s: float | None = None  # from the start until the label stream served the whole queue in order
    seconds: float | None = None  # the whole push, including clusters and the old ranking's cleanup

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "project": self.project_title,
            "project_url": self.project_url,
            "created_project": self.created_project,
            "pushed": self.pushed,
            "reconciled": self.reconciled,
            "missing_files": self.missing_files,
            "model_version_tag": self.tag,
            "queue_size": self.queue_size,
            "first": self.first,
            "served_after_s": self.served_after_s,
            "seconds": self.seconds,
        }


def _servable(
    pending: list[PendingItem], settings: Settings, report: PushReport, progress: Progress
) -> tuple[list[PendingItem], dict[int, str]]:
    """The pending items Label Studio can load, with their image URLs. A vanished file or an image outside the
    served folder skips that item with a warning (it stays pending); a missing setting fails the push."""
    cfg = settings.label_studio
    keep: list[PendingItem] = []
    urls: dict[int, str] = {}
    for item in pending:
        root = Path(item.pool_root or "/")
        path = absolute_path(root, item.path) if item.path else None
        if path is None or not path.is_file():
            report.missing_files.append(item.path or item.content_id)
            progress.warn(f"not pushed: {item.path or item.content_id} no longer exists")
            continue
        try:
            urls[item.item_id] = image_url(path, root, cfg.document_root, cfg.url_prefix)
        except UnservableImageError as exc:
            report.missing_files.append(item.path)
            progress.warn(f"not pushed: {exc}")
            continue
        keep.append(item)
    return keep, urls


def new_tag(mv: ModelVersionRecord) -> str:
    return f"{TAG_PREFIX}{mv.version}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"[:190]


def _task_payload(
    item: PendingItem,
    url: str,
    position: int,
    tag: str,
    project: ProjectHandle,
    mv: ModelVersionRecord,
    min_conf: float,
    pred: StoredPrediction | None,
) -> dict[str, Any]:
    data = {
        project.ui.data_key: url,
        "curation_id": item.content_id,
        "curation_rank": position,
        "curation_score": round(item.score, 6),
        "curation_strategy": item.strategy,
        "curation_model_version": mv.version,
    }
    return {"data": data, "predictions": [_ranking_prediction(tag, position, pred, project, mv, min_conf)]}


def _ranking_prediction(
    tag: str,
    position: int,
    pred: StoredPrediction | None,
    project: ProjectHandle,
    mv: ModelVersionRecord,
    min_conf: float,
) -> dict[str, Any]:
    """The prediction that places a task in the queue (its score) and pre-annotates it (its result). Every queued
    task gets one, even without model output to show: without it the label stream would not serve the task."""
    result = prediction_result(mv.task, pred, mv.class_names, project.ui, min_conf) if pred else []
    return {"model_version": tag, "score": queue_score(position), "result": result}


def push(
    store: Store,
    settings: Settings,
    ls: LabelStudioClient,
    mv: ModelVersionRecord,
    *,
    project: ProjectHandle | None = None,
    progress: Progress | None = None,
) -> PushReport:
    """Import every push-marked selected item that is not a task yet, then make the label stream serve the
    whole queue (older queued tasks first, then the new ones in selection order)."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    project = project or open_project(store, settings, ls, mv)
    report = PushReport(project.record.project_id, project.record.title, project.url, project.created)
    report.reconciled = reconcile(store, ls, project)
    ensure_storage(settings, ls, project)

    queue = store.label_studio.queue(project.record.id)
    pending, urls = _servable(store.label_studio.pending(project.record.id), settings, report, progress)

    live_tag = str(project.remote.get("model_version") or "")
    active = project.record.active_tag
    serving = bool(active and live_tag == active)
    if not pending and serving:
        report.tag = live_tag
        report.queue_size = len(queue)
        report.first = _describe_first(queue)
        return report  # nothing new, and the project already serves curate's ranking

    # While the project serves curate's ranking, new tasks are appended under the same tag: their scores continue
    # after the last queued position, so nothing else is rewritten (Label Studio deletes predictions slowly).
    # Otherwise a new ranking tag is written for the whole queue: old tasks first, in their order, then the new.
    last = max((q.position or 0 for q in queue), default=0)
    append = serving and all(q.position is not None for q in queue) and last + len(pending) < MAX_POSITION
    tag = active if append and active else new_tag(mv)
    first_new = last if append else len(queue)
    min_conf = settings.strategy.detection.conf
    chunk_size = settings.label_studio.import_chunk
    progress.start(f"pushing {len(pending)} tasks to {project.record.title}", len(pending))
    new_rows: list[dict[str, Any]] = []
    try:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            positions = list(range(first_new + start + 1, first_new + start + len(chunk) + 1))
            preds = store.scores.predictions(mv.id, [p.item_id for p in chunk], len(mv.class_names))
            payload = [
                _task_payload(item, urls[item.item_id], pos, tag, project, mv, min_conf, preds.get(item.item_id))
                for item, pos in zip(chunk, positions, strict=True)
            ]
            rows = _import_chunk(store, ls, project, chunk, positions, payload)
            new_rows.extend(rows)
            report.pushed += len(rows)
            progress.advance(len(chunk))
    finally:
        progress.finish()

    # task id -> (position, cluster)
    placed = {r["task_id"]: (r["position"], r["cluster"]) for r in new_rows}
    if not append:
        old = [(q, i + 1) for i, q in enumerate(queue)]
        _write_predictions(
            store, ls, project, mv, tag, [(q.item_id, q.task_id, pos) for q, pos in old], settings, progress
        )
        store.label_studio.set_positions(project.record.id, [(q.item_id, pos, q.cluster) for q, pos in old])
        placed.update({q.task_id: (pos, q.cluster) for q, pos in old})
        ls.set_ranking(project.record.project_id, tag)  # from here on the label stream serves the new order
    report.served_after_s = round(time.perf_counter() - started, 3)
    # the queue changed either way: the next reprioritize re-ranks
    store.label_studio.set_ranking(project.record.id, tag, None)
    _set_clusters(ls, project.record.project_id, tag, placed, settings.label_studio.cluster_window)
    if not append:
        _drop_other_tags(ls, project.record.project_id, tag)
    report.tag = tag
    final = store.label_studio.queue(project.record.id)
    report.queue_size = len(final)
    report.first = _describe_first(final)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


MAX_POSITION = 1_000_000


def queue_score(position: int) -> float:
    """The prediction score Label Studio ranks by, lowest first: the queue position in millionths.

    Bulk prediction imports silently drop scores outside [0, 1]; a fixed scale (rather than position / queue size)
    lets new tasks be appended after the queue without rewriting every other prediction.
    """
    return position / MAX_POSITION


def _import_chunk(
    store: Store,
    ls: LabelStudioClient,
    project: ProjectHandle,
    chunk: Sequence[PendingItem],
    positions: list[int],
    payload: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Import one chunk exactly once, whatever happens to the request."""
    pid = project.record.project_id
    intent = store.label_studio.add_intent(project.record.id, [p.content_id for p in chunk])
    by_content = {p.content_id: (p, pos, task) for p, pos, task in zip(chunk, positions, payload, strict=True)}
    try:
        task_ids = ls.import_tasks(pid, payload)
        checkpoint("push-after-import")
        imported = dict(zip([p.content_id for p in chunk], task_ids, strict=True))
    except ImportOutcomeUnknown as exc:
        # The server may have committed, or may still be committing: look, and never import again in this run.
        found = ls.tasks_by_curation_id(pid, list(by_content))
        imported = {cid: min(ids) for cid, ids in found.items() if cid in by_content}
        missing = len(by_content) - len(imported)
        if missing:
            # Keep the intent: the next run looks these up again before importing what is still absent.
            store.label_studio.record_tasks(project.record.id, _task_rows(imported, by_content), None)
            raise ImportOutcomeUnknown(
                f"{exc}; {missing} of {len(chunk)} tasks of that import are not in the project, so the import "
                "may still be running: rerun later, and curate checks for them before importing them again"
            ) from None
    rows = _task_rows(imported, by_content)
    store.label_studio.record_tasks(project.record.id, rows, intent)
    return rows


def _task_rows(
    imported: dict[str, int], by_content: dict[str, tuple[PendingItem, int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    return [
        {
            "item_id": by_content[cid][0].item_id,
            "task_id": tid,
            "position": by_content[cid][1],
            "cluster": by_content[cid][0].cluster,
            "selection_id": by_content[cid][0].selection_id,
        }
        for cid, tid in imported.items()
    ]


def ensure_storage(settings: Settings, ls: LabelStudioClient, project: ProjectHandle) -> str | None:
    """Local-files serving needs a local storage in the project covering the pool (a subfolder of the root).
    Returns the storage path, or None when images are served from ``url_prefix``."""
    cfg = settings.label_studio
    if cfg.url_prefix or not cfg.document_root or not settings.pool.path:
        return None
    from curation.scoring.pool import resolve_pool

    root = resolve_pool(settings.pool.path).root
    document_root = Path(cfg.document_root).expanduser().resolve()
    if root == document_root or not root.is_relative_to(document_root):
        raise ConfigError(
            f"the pool {root} must be a subfolder of Label Studio's document root {document_root} "
            "(label_studio.document_root = the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        )
    ls.ensure_local_storage(project.record.project_id, str(root))
    return str(root)


def _write_predictions(
    store: Store,
    ls: LabelStudioClient,
    project: ProjectHandle,
    mv: ModelVersionRecord,
    tag: str,
    tasks: Sequence[tuple[int, int, int]],
    settings: Settings,
    progress: Progress,
) -> None:
    """(item id, task id, position) → one prediction each under ``tag``, in bulk."""
    if not tasks:
        return
    min_conf = settings.strategy.detection.conf
    chunk = max(100, settings.label_studio.import_chunk * 2)
    progress.start(f"writing {len(tasks)} predictions", len(tasks))
    try:
        for start in range(0, len(tasks), chunk):
            part = tasks[start : start + chunk]
            stored = store.scores.predictions(mv.id, [item_id for item_id, _, _ in part], len(mv.class_names))
            preds: list[dict[str, Any]] = []
            for item_id, task_id, position in part:
                prediction = _ranking_prediction(tag, position, stored.get(item_id), project, mv, min_conf)
                preds.append({"task": task_id, **prediction})
            try:
                ls.import_predictions(project.record.project_id, preds)
            except LabelStudioError as exc:
                if exc.status != 400:
                    raise
                # One deleted task fails the whole bulk write: find the tasks that are gone, drop them, retry.
                existing = ls.task_ids(project.record.project_id)
                gone = [int(p["task"]) for p in preds if p["task"] not in existing]
                if not gone:
                    raise
                store.label_studio.mark_deleted(project.record.id, gone)
                progress.warn(f"{len(gone)} queued task(s) were deleted in Label Studio; they leave the queue")
                ls.import_predictions(project.record.project_id, [p for p in preds if p["task"] in existing])
            progress.advance(len(part))
    finally:
        progress.finish()


def _set_clusters(
    ls: LabelStudioClient, project_id: int, tag: str, placed: Mapping[int, tuple[int | None, int | None]], window: int
) -> None:
    """Bulk imports drop ``cluster``; PATCH sets it, one request per prediction (Label Studio spends 60-100 ms of
    server time on each, plus a lookup of the prediction's id), so only for the first ``window`` queue positions,
    where annotators are served next, and a few requests at a time."""
    wanted = {
        task: cluster
        for task, (position, cluster) in placed.items()
        if cluster is not None and position is not None and position <= window
    }
    if not wanted:
        return

    def set_one(task_id: int, cluster: int) -> None:
        prediction = ls.prediction_id(task_id, tag)
        if prediction is not None:  # None: the task was deleted meanwhile
            ls.set_cluster(prediction, cluster)

    jobs = list(wanted.items())
    set_one(*jobs[0])  # one alone first: the client authenticates (or refreshes its token) once
    with ThreadPoolExecutor(max_workers=CLUSTER_REQUESTS) as pool:
        for _ in pool.map(lambda job: set_one(*job), jobs[1:]):
            pass  # re-raises the first failure


def _drop_other_tags(ls: LabelStudioClient, project_id: int, keep: str) -> None:
    for tag, count in ls.model_versions(project_id).items():
        if tag.startswith(TAG_PREFIX) and tag != keep:
            ls.delete_model_version(project_id, tag, count)


def _describe_first(queue: Sequence[QueuedTask]) -> dict[str, Any] | None:
    if not queue:
        return None
    first = queue[0]
    return {"task_id": first.task_id, "item_id": first.content_id, "position": first.position}


# --------------------------------------------------------------------------------------------------------------------
# Reprioritize


@dataclass
class ReprioritizeReport:
    project_id: int
    project_title: str
    project_url: str
    changed: bool
    reason: str
    tag: str | None
    queue_size: int
    topped_up: int = 0
    moved: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)
    push: PushReport | None = None
    served_after_s: float | None = None  # from the start until the label stream served the new order
    seconds: float | None = None  # the whole run, including Label Studio's cleanup of the superseded ranking

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "project": self.project_title,
            "project_url": self.project_url,
            "changed": self.changed,
            "reason": self.reason,
            "model_version_tag": self.tag,
            "queue_size": self.queue_size,
            "topped_up": self.topped_up,
            "moved": self.moved,
            "top": self.top,
            "served_after_s": self.served_after_s,
            "seconds": self.seconds,
        }


def ranking_signature(
    mv: ModelVersionRecord, strategy: str, options: dict[str, Any], seed: int, item_ids: Sequence[int]
) -> str:
    blob = json.dumps(
        [mv.version, strategy, options, seed, sorted(int(i) for i in item_ids)], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def rank_queue(
    store: Store,
    settings: Settings,
    mv: ModelVersionRecord,
    queue: Sequence[QueuedTask],
    strategy: Strategy,
    labeled: NDArray[np.int64],
) -> tuple[list[QueuedTask], dict[int, int | None]]:
    """Order the queued tasks with the strategy, diversity measured against the ``labeled`` items. Tasks the
    strategy does not place (no valid model output, or a near-duplicate of a better-placed task) keep their
    relative order at the end: they are tasks already, so they stay in the queue. Returns the order and each
    item's cluster."""
    item_ids = np.array([q.item_id for q in queue], dtype=np.int64)
    cands = items_uncertainty(store, mv, item_ids, strategy.measure or FALLBACK_MEASURE, settings.strategy.detection)
    view = pool_view(store, mv, cands, strategy, settings.strategy, labeled)
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


def reprioritize(
    store: Store,
    settings: Settings,
    ls: LabelStudioClient,
    mv: ModelVersionRecord,
    pool_id: int,
    *,
    strategy_name: str | None = None,
    queue_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ReprioritizeReport:
    """Re-rank every queued, unlabeled task with the strategy and make the label stream follow; with
    ``queue_size``, first top the queue up with newly selected items. A no-op when nothing changed."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    project = open_project(store, settings, ls, mv)
    reconcile(store, ls, project)
    topped_up = 0
    push_report = None
    queue = store.label_studio.queue(project.record.id)
    if queue_size is not None and len(queue) < queue_size:
        try:
            result = run_selection(
                store,
                pool_id,
                mv,
                settings.strategy,
                queue_size - len(queue),
                strategy_name,
                push_to=project.record.id,
            )
        except NothingToSelectError:
            result = None
        if result is not None or store.label_studio.pending(project.record.id):
            push_report = push(store, settings, ls, mv, project=project, progress=progress)
            topped_up = push_report.pushed
            project = open_project(store, settings, ls, mv)
            queue = store.label_studio.queue(project.record.id)

    strategy = build_strategy(settings.strategy, strategy_name)
    labeled = store.labels.item_ids()
    options = {
        **settings.strategy.options_for(strategy_name or settings.strategy.name),
        # everything else that changes the order: a changed setting must re-rank, not be a no-op
        "_balance": settings.strategy.balance,
        "_min_distance": settings.strategy.min_distance,
        "_detection": settings.strategy.detection.model_dump() if mv.task != "classify" else None,
        "_labeled": len(labeled),  # diversity is measured against labeled items
    }
    signature = ranking_signature(mv, strategy.name, options, settings.strategy.seed, [q.item_id for q in queue])

    served_after: float | None = None

    def report(
        changed: bool, reason: str, tag: str | None, moved: int = 0, top: list[dict[str, Any]] | None = None
    ) -> ReprioritizeReport:
        return ReprioritizeReport(
            project_id=project.record.project_id,
            project_title=project.record.title,
            project_url=project.url,
            changed=changed,
            reason=reason,
            tag=tag,
            queue_size=len(queue),
            topped_up=topped_up,
            moved=moved,
            top=top or [],
            push=push_report,
            served_after_s=None if served_after is None else round(served_after, 3),
            seconds=round(time.perf_counter() - started, 3),
        )

    if not queue:
        return report(False, "the queue is empty", project.record.active_tag)
    live_tag = str(project.remote.get("model_version") or "")
    if (
        not force
        and signature == project.record.ranking_signature
        and project.record.active_tag
        and live_tag == project.record.active_tag
    ):
        return report(False, "nothing changed since the last ranking", project.record.active_tag)

    ordered, clusters = rank_queue(store, settings, mv, queue, strategy, labeled)
    tag = new_tag(mv)
    tasks = [(q.item_id, q.task_id, pos) for pos, q in enumerate(ordered, start=1)]
    _write_predictions(store, ls, project, mv, tag, tasks, settings, progress)
    ls.set_ranking(project.record.project_id, tag)  # from here on the label stream serves the new order
    served_after = time.perf_counter() - started
    store.label_studio.set_positions(
        project.record.id,
        [(q.item_id, pos, clusters.get(q.item_id)) for pos, q in enumerate(ordered, start=1)],
    )
    store.label_studio.set_ranking(project.record.id, tag, signature)
    placed = {q.task_id: (pos, clusters.get(q.item_id)) for pos, q in enumerate(ordered, start=1)}
    _set_clusters(ls, project.record.project_id, tag, placed, settings.label_studio.cluster_window)
    _drop_other_tags(ls, project.record.project_id, tag)

    old = {q.item_id: q.position for q in queue}
    moved = sum(1 for pos, q in enumerate(ordered, start=1) if old.get(q.item_id) != pos)
    top = [
        {"position": pos, "was": old.get(q.item_id), "task_id": q.task_id, "item_id": q.content_id}
        for pos, q in enumerate(ordered[:10], start=1)
    ]
    return report(True, f"re-ranked with {strategy.name}", tag, moved, top)


# --------------------------------------------------------------------------------------------------------------------
# Pull


@dataclass
class PullReport:
    project_id: int
    project_title: str
    tasks_seen: int = 0
    new_annotations: int = 0
    labeled_tasks: int = 0
    skipped_tasks: int = 0
    foreign_tasks: int = 0
    watermark: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "project": self.project_title,
            "tasks_seen": self.tasks_seen,
            "new_annotations": self.new_annotations,
            "labeled_tasks": self.labeled_tasks,
            "skipped_tasks": self.skipped_tasks,
            "foreign_tasks": self.foreign_tasks,
            "watermark": self.watermark,
        }


def known_project(store: Store, settings: Settings, ls: LabelStudioClient) -> ProjectHandle:
    """The configured project, which this database must have pushed to already (its task type is known)."""
    name = settings.label_studio.project
    if not name:
        raise ConfigError("no Label Studio project: pass --project NAME_OR_ID (or set label_studio.project)")
    remote = ls.find_project(name)
    if remote is None:
        raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {name!r}")
    records = [p for p in store.label_studio.projects() if p.server == ls.url and p.project_id == int(remote["id"])]
    if not records:
        raise ProjectNotFoundError(
            f"curate has not pushed to project {name!r} from {store.display_url} yet: nothing to pull"
        )
    ui = LabelingInterface(from_name="", to_name="", data_key="image")
    return ProjectHandle(records[0], ui, remote)


def pull(
    store: Store,
    settings: Settings,
    ls: LabelStudioClient,
    *,
    progress: Progress | None = None,
) -> PullReport:
    """Fetch annotations of tasks updated since the last pull, page by page; each page is committed with the
    new watermark, so a killed pull resumes and a rerun stores nothing twice."""
    progress = progress or NullProgress()
    project = known_project(store, settings, ls)
    report = PullReport(project.record.project_id, project.record.title)
    since = watermark_with_margin(project.record.pulled_until)
    progress.start(f"pulling annotations from {project.record.title}", None)
    try:
        for page in ls.updated_tasks(project.record.project_id, since):
            _store_page(store, project, page, report)
            progress.advance(len(page))
    finally:
        progress.finish()
    return report


def _store_page(store: Store, project: ProjectHandle, page: list[dict[str, Any]], report: PullReport) -> None:
    task_ids = [int(t["id"]) for t in page]
    known = store.label_studio.items_for_tasks(project.record.id, task_ids)
    unknown_cids = {
        int(t["id"]): str((t.get("data") or {}).get("curation_id"))
        for t in page
        if int(t["id"]) not in known and (t.get("data") or {}).get("curation_id")
    }
    by_content = store.items.by_content(sorted(set(unknown_cids.values()))) if unknown_cids else {}
    adopted = [(by_content[c], tid) for tid, c in unknown_cids.items() if c in by_content]
    known.update({tid: item for item, tid in adopted})
    annotations: list[PulledAnnotation] = []
    watermark = report.watermark
    for task in page:
        report.tasks_seen += 1
        updated = task.get("updated_at")
        if updated and (watermark is None or parse_ls_time(updated) > parse_ls_time(watermark)):  # type: ignore[operator]
            watermark = updated
        item_id = known.get(int(task["id"]))
        if item_id is None:
            report.foreign_tasks += 1
            continue
        done = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if any(not a.get("was_cancelled") for a in done):
            report.labeled_tasks += 1
        elif done:
            report.skipped_tasks += 1
        for a in done:
            annotations.append(
                PulledAnnotation(
                    annotation_id=int(a["id"]),
                    task_id=int(task["id"]),
                    item_id=item_id,
                    was_cancelled=bool(a.get("was_cancelled")),
                    annotator=_annotator(a.get("completed_by")),
                    lead_time=float(a["lead_time"]) if a.get("lead_time") is not None else None,
                    labels=normalize_annotation(project.record.task, a.get("result") or []),
                    result=a.get("result") or [],
                    created_at=parse_ls_time(a.get("created_at")),
                    updated_at=parse_ls_time(a.get("updated_at")),
                )
            )
    report.new_annotations += store.label_studio.store_annotations(project.record.id, annotations, adopted, watermark)
    report.watermark = watermark


def _annotator(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("id"))
    return None if value is None else str(value)
