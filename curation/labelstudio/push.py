"""``push``: import the selected items that are not tasks yet, exactly once, and publish the queue's order.

While the project serves curate's ranking, new tasks are *appended* under the same tag: their scores continue
after the last queued task's score, so nothing else is rewritten (Label Studio deletes predictions slowly).
Otherwise (or when the scores would pass 1) the whole queue is *re-tagged*: old tasks first, in their order,
then the new ones (``plan_push``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import LabelStudioSettings, S3Settings, Settings, StrategySettings
from curation.errors import LabelStudioError, UnservableImageError
from curation.faults import checkpoint
from curation.labelstudio.client import ImportOutcomeUnknown, LabelStudioAPI
from curation.labelstudio.formats import fit_scores, image_url, queue_scores, task_payload
from curation.labelstudio.project import ProjectHandle, ensure_storage
from curation.labelstudio.publish import Placement, Ranking, publish
from curation.labelstudio.rank import confidences, place_tests
from curation.labelstudio.reconcile import reconcile
from curation.labelstudio.tags import make_tag
from curation.labelstudio.tasks import tasks_by_curation_id
from curation.progress import NullProgress, Progress
from curation.reports import Report
from curation.scoring.pool import absolute_path, is_remote, item_location
from curation.selection import build_strategy
from store import Store
from store.records import ModelVersionRecord, PendingItem, QueuedTask


@dataclass
class PushReport(Report):
    project_id: int
    project: str
    project_url: str
    created_project: bool
    pushed: int = 0
    reconciled: int = 0
    awaiting_import: int = 0  # selected items held back: an earlier import of theirs has an unknown outcome
    duplicates_removed: int = 0
    annotated_duplicates: list[dict[str, Any]] = field(default_factory=list)  # never deleted: for a person to resolve
    missing_files: list[str] = field(default_factory=list)
    model_version_tag: str | None = None
    queue_size: int = 0
    first: dict[str, Any] | None = None
    served_after_s: float | None = None  # from the start until the label stream served the whole queue in order
    seconds: float | None = None  # the whole push, including clusters and the old ranking's cleanup


@dataclass(frozen=True)
class PushPlan:
    append: bool
    """True: the new tasks join the live ranking's tag; False: the whole queue gets a new tag."""
    tag: str
    after: int
    """The new tasks take positions ``after + 1``, ``after + 2``, …"""


def plan_push(queue: Sequence[QueuedTask], new: int, project: ProjectHandle, model_version: str) -> PushPlan | None:
    """How ``new`` tasks join ``queue``; None when there is nothing to do (nothing new, and the project already
    serves curate's ranking of every queued task, or nothing is queued)."""
    placed = all(q.position is not None for q in queue)  # adopted tasks have no position (nor a prediction) yet
    if not new and (not queue or (project.serving and placed)):
        return None  # an empty ranking cannot be served (Label Studio refuses a model_version with no predictions)
    last = max((q.position or 0 for q in queue), default=0)
    append = project.serving and placed
    if append and project.record.active_tag:
        return PushPlan(True, project.record.active_tag, last)
    return PushPlan(False, make_tag(model_version), len(queue))


def push(
    store: Store,
    ls: LabelStudioAPI,
    mv: ModelVersionRecord,
    project: ProjectHandle,
    cfg: LabelStudioSettings,
    strategy_cfg: StrategySettings,
    *,
    pool_path: str | None,
    progress: Progress | None = None,
    s3: S3Settings | None = None,
) -> PushReport:
    """Import every push-marked selected item that is not a task yet, then make the label stream serve the
    whole queue (older queued tasks first, then the new ones in selection order). ``strategy_cfg``: its measure
    gives the model's confidence (the prediction score), its ``detection.conf`` the lowest box confidence shown
    as a pre-annotation."""
    started = time.perf_counter()
    min_conf = strategy_cfg.detection.conf
    measure = build_strategy(strategy_cfg, store).measure
    progress = progress or NullProgress()
    report = PushReport(project.record.project_id, project.record.title, project.url, project.created)
    found = reconcile(store, ls, project, settle_s=cfg.import_settle_s, progress=progress)
    report.reconciled = found.adopted
    report.duplicates_removed = found.duplicates_removed
    report.annotated_duplicates = found.annotated_duplicates
    ensure_storage(ls, project, cfg, pool_path, s3)

    queue = store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)
    pending = store.label_studio.pending(project.record.id)
    report.awaiting_import = sum(p.content_id in found.held for p in pending)
    pending, urls = _servable([p for p in pending if p.content_id not in found.held], cfg, report, progress)
    plan = plan_push(queue, len(pending), project, mv.version)
    tests = store.selections.test_items()
    if plan is not None and plan.append and any(p.item_id in tests for p in pending):
        plan = PushPlan(False, make_tag(mv.version), len(queue))  # new test tasks take their places by rule
    if plan is None:
        report.model_version_tag = project.live_tag
        report.queue_size = len(queue)
        report.first = _describe_first(queue)
        return report
    scores: dict[int, float] = {}
    position: dict[int, int] = {}
    if plan.append:
        new_conf = confidences(store, strategy_cfg, mv, [p.item_id for p in pending], measure)
        after = _live_score(ls, project, queue[-1].task_id) if queue else 0.0
        appended = queue_scores(new_conf, after) if after is not None else [2.0]
        if max(appended, default=0.0) <= 1.0:
            scores = {p.item_id: s for p, s in zip(pending, appended, strict=True)}
            position = {p.item_id: plan.after + k for k, p in enumerate(pending, 1)}
        else:  # no room left above the queue's last score (or it is gone): re-tag the whole queue
            plan = PushPlan(False, make_tag(mv.version), len(queue))
    if not plan.append:  # old tasks first, in their order, then the new ones; test tasks where the rule puts them
        everyone = place_tests(
            [q.item_id for q in queue] + [p.item_id for p in pending], tests, cfg.test_set_every, int
        )
        conf = confidences(store, strategy_cfg, mv, everyone, measure)
        scores = dict(zip(everyone, fit_scores(queue_scores(conf)), strict=True))
        position = {item: k for k, item in enumerate(everyone, 1)}

    progress.start(f"pushing {len(pending)} tasks to {project.record.title}", len(pending))
    new: list[Placement] = []
    try:
        for start in range(0, len(pending), cfg.import_chunk):
            chunk = pending[start : start + cfg.import_chunk]
            positions = [position[p.item_id] for p in chunk]
            preds = store.scores.predictions(mv.id, [p.item_id for p in chunk], len(mv.class_names))
            payload = [
                task_payload(
                    item,
                    urls[item.item_id],
                    scores[item.item_id],
                    plan.tag,
                    preds.get(item.item_id),
                    mv,
                    project.ui,
                    min_conf,
                )
                for item in chunk
            ]
            placed = _import_chunk(store, ls, project, chunk, positions, payload, scores)
            new.extend(placed)
            report.pushed += len(placed)
            progress.advance(len(chunk))
    finally:
        progress.finish()

    old = (
        []
        if plan.append
        else [Placement(q.item_id, q.task_id, position[q.item_id], q.cluster, scores[q.item_id]) for q in queue]
    )
    placements = sorted([*old, *new], key=lambda p: p.position)
    ranking = Ranking(plan.tag, placements, written=frozenset(p.task_id for p in new))
    served = publish(
        store,
        ls,
        project,
        mv,
        ranking,
        min_conf=min_conf,
        chunk=cfg.import_chunk,
        cluster_window=cfg.cluster_window,
        superseded_grace_s=cfg.superseded_grace_s,
        progress=progress,
    )
    report.served_after_s = round(served - started, 3)
    report.model_version_tag = plan.tag
    final = store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)
    report.queue_size = len(final)
    report.first = _describe_first(final)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def push_with(
    store: Store,
    ls: LabelStudioAPI,
    mv: ModelVersionRecord,
    project: ProjectHandle,
    settings: Settings,
    progress: Progress | None = None,
) -> PushReport:
    """``push`` under ``settings``' one reading of the Label Studio, strategy, pool and ``pool.s3.*`` keys (the
    S3 keys, not only the AWS environment, reach the project's storage): what ``select --push``, ``push`` and
    ``testset draw`` call."""
    return push(
        store,
        ls,
        mv,
        project,
        settings.label_studio,
        settings.strategy,
        pool_path=settings.pool.path,
        progress=progress,
        s3=settings.pool.s3,
    )


def _servable(
    pending: list[PendingItem], cfg: LabelStudioSettings, report: PushReport, progress: Progress
) -> tuple[list[PendingItem], dict[int, str]]:
    """The pending items Label Studio can load, with their image URLs. A vanished file or an image outside the
    served folder skips that item with a warning (it stays pending); a missing setting fails the push."""
    keep: list[PendingItem] = []
    urls: dict[int, str] = {}
    for item in pending:
        if item.pool_root and item.pool_root.startswith("s3://") and item.path and not cfg.url_prefix:
            urls[item.item_id] = item_location(item.pool_root, item.path)  # the project's S3 storage resolves it
            keep.append(item)
            continue
        if item.path and is_remote(item.path):  # a manifest's s3:// or https:// line: the task references it as is
            urls[item.item_id] = item.path
            keep.append(item)
            continue
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


def _import_chunk(
    store: Store,
    ls: LabelStudioAPI,
    project: ProjectHandle,
    chunk: Sequence[PendingItem],
    positions: list[int],
    payload: list[dict[str, Any]],
    scores: dict[int, float],
) -> list[Placement]:
    """Import one chunk exactly once, whatever happens to the request."""
    pid = project.record.project_id
    intent = store.label_studio.add_intent(project.record.id, [p.content_id for p in chunk])
    by_content = {p.content_id: (p, pos) for p, pos in zip(chunk, positions, strict=True)}
    try:
        task_ids = ls.import_tasks(pid, payload)
        checkpoint("push-after-import")
        imported = dict(zip([p.content_id for p in chunk], task_ids, strict=True))
    except ImportOutcomeUnknown as exc:
        # The server may have committed, or may still be committing: look, and never import again in this run.
        found = tasks_by_curation_id(ls, pid, list(by_content))
        imported = {cid: min(ids) for cid, ids in found.items() if cid in by_content}
        missing = len(by_content) - len(imported)
        if missing:
            # Keep the intent: later runs hold these items until they appear or the settle time passes.
            store.label_studio.record_tasks(project.record.id, _task_rows(imported, by_content), None)
            raise ImportOutcomeUnknown(
                f"{exc}; {missing} of {len(chunk)} tasks of that import are not in the project, so the import "
                "may still be running: later runs adopt them when they appear and import them again only if they "
                "are still absent after label_studio.import_settle_s"
            ) from None
    except LabelStudioError:
        # refused (4xx) or never sent (connection refused): nothing was imported, nothing to wait for
        store.label_studio.drop_intents([intent])
        raise
    store.label_studio.record_tasks(project.record.id, _task_rows(imported, by_content), intent)
    return [
        Placement(
            by_content[cid][0].item_id,
            tid,
            by_content[cid][1],
            by_content[cid][0].cluster,
            scores[by_content[cid][0].item_id],
        )
        for cid, tid in imported.items()
    ]


def _task_rows(imported: dict[str, int], by_content: dict[str, tuple[PendingItem, int]]) -> list[dict[str, Any]]:
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


def _live_score(ls: LabelStudioAPI, project: ProjectHandle, task_id: int) -> float | None:
    """The score of a task's prediction under the live ranking (None: it has none)."""
    for pred in ls.task_predictions(task_id):
        if pred.get("task") == task_id and pred.get("model_version") == project.record.active_tag:
            score = pred.get("score")
            return None if score is None else float(score)
    return None


def _describe_first(queue: Sequence[QueuedTask]) -> dict[str, Any] | None:
    if not queue:
        return None
    first = queue[0]
    return {"task_id": first.task_id, "item_id": first.content_id, "position": first.position}
