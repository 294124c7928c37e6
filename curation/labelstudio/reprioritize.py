"""``reprioritize``: re-rank every queued, unlabeled task with the strategy and make the label stream follow;
optionally top the queue up with newly selected items first. A no-op when nothing changed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from curation.config import LabelStudioSettings, S3Settings, StrategySettings
from curation.errors import NothingToSelectError
from curation.labelstudio.client import UNCERTAINTY_SAMPLING, LabelStudioAPI
from curation.labelstudio.formats import fit_scores, queue_scores
from curation.labelstudio.project import open_project
from curation.labelstudio.publish import Placement, Ranking, publish
from curation.labelstudio.push import PushReport, push
from curation.labelstudio.rank import (
    confidences,
    moved_count,
    place_tests,
    rank_queue,
    ranking_options,
    ranking_signature,
)
from curation.labelstudio.reconcile import reconcile
from curation.labelstudio.tags import make_tag
from curation.progress import NullProgress, Progress
from curation.reports import HIDDEN, Report
from curation.selection import build_strategy, resolve_auto, run_selection
from store import Store
from store.records import ModelVersionRecord


@dataclass
class ReprioritizeReport(Report):
    project_id: int
    project: str
    project_url: str
    changed: bool
    reason: str
    model_version_tag: str | None
    queue_size: int
    topped_up: int = 0
    moved: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)
    push: PushReport | None = field(default=None, metadata=HIDDEN)
    served_after_s: float | None = None  # from the start until the label stream served the new order
    seconds: float | None = None  # the whole run, including Label Studio's cleanup of the superseded ranking
    strategy: str | None = field(default=None, metadata=HIDDEN)  # the strategy that ranked (when changed)
    model_version: str | None = None  # the model that ranked (or would have)
    model_note: str | None = None  # set when that model is not the registry's current one


def reprioritize(
    store: Store,
    ls: LabelStudioAPI,
    mv: ModelVersionRecord,
    pool_id: int,
    cfg: LabelStudioSettings,
    strategy_cfg: StrategySettings,
    *,
    pool_path: str | None,
    queue_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    s3: S3Settings | None = None,
    add_labels: bool = False,
    encoder: ModelVersionRecord | None = None,
) -> ReprioritizeReport:
    """Re-rank the queue of project ``cfg.project`` with ``strategy_cfg`` (its ``name`` is the strategy); with
    ``queue_size``, first top the queue up with newly selected items from pool ``pool_id``. ``encoder``: the image
    encoder whose embeddings diversity and near-duplicates use (``embedding.model``)."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    strategy_cfg, _ = resolve_auto(strategy_cfg, store)
    min_conf = strategy_cfg.detection.conf
    project = open_project(store, ls, mv, cfg.project, add_labels=add_labels)
    reconcile(store, ls, project, settle_s=cfg.import_settle_s, progress=progress)
    topped_up = 0
    push_report = None
    queue = store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)
    if queue_size is not None and len(queue) < queue_size:
        try:
            result = run_selection(
                store, pool_id, mv, strategy_cfg, queue_size - len(queue), push_to=project.record.id, encoder=encoder
            )
        except NothingToSelectError:
            result = None
        if result is not None or store.label_studio.pending(project.record.id):
            push_report = push(store, ls, mv, project, cfg, strategy_cfg, pool_path=pool_path, progress=progress, s3=s3)
            topped_up = push_report.pushed
            project = open_project(store, ls, mv, cfg.project, add_labels=add_labels)
            queue = store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)

    strategy = build_strategy(strategy_cfg)
    labeled = store.labels.item_ids()
    tests = store.selections.test_items()
    options = ranking_options(strategy_cfg, mv, len(labeled), encoder)
    if tests:  # a test set that grew re-ranks even when the queue holds the same tasks (ls:// pools)
        options["_test_set_every"] = cfg.test_set_every
        options["_test_set_size"] = len(tests)
    signature = ranking_signature(mv, strategy.name, options, strategy_cfg.seed, [q.item_id for q in queue])

    def report(changed: bool, reason: str, tag: str | None, **more: Any) -> ReprioritizeReport:
        return ReprioritizeReport(
            project_id=project.record.project_id,
            project=project.record.title,
            project_url=project.url,
            changed=changed,
            reason=reason,
            model_version_tag=tag,
            queue_size=len(queue),
            topped_up=topped_up,
            push=push_report,
            seconds=round(time.perf_counter() - started, 3),
            model_version=mv.version,
            **more,
        )

    if not queue:
        return report(False, "the queue is empty", project.record.active_tag)
    if not force and signature == project.record.ranking_signature:
        if project.serving:
            return report(False, "nothing changed since the last ranking", project.record.active_tag)
        live = project.record.active_tag
        if live and project.drift and ls.model_versions(project.record.project_id).get(live, 0) >= len(queue):
            # someone switched the project away (e.g. back to Sequential sampling): serve the ranking again
            drift = project.drift
            ls.set_ranking(project.record.project_id, live)
            project.remote.update(model_version=live, sampling=UNCERTAINTY_SAMPLING)
            return report(
                True, f"repaired the project's label stream ({drift}): it serves curate's ranking again", live
            )

    active = [q for q in queue if q.item_id not in tests]  # test tasks are placed by rule, not by the strategy
    ordered, clusters = rank_queue(store, strategy_cfg, mv, active, strategy, labeled, encoder) if active else ([], {})
    ordered = place_tests(
        [*ordered, *(q for q in queue if q.item_id in tests)], tests, cfg.test_set_every, lambda q: q.item_id
    )
    scores = fit_scores(
        queue_scores(confidences(store, strategy_cfg, mv, [q.item_id for q in ordered], strategy.measure))
    )
    placements = [
        Placement(q.item_id, q.task_id, pos, clusters.get(q.item_id), score)
        for pos, (q, score) in enumerate(zip(ordered, scores, strict=True), 1)
    ]
    tag = make_tag(mv.version)
    served = publish(
        store,
        ls,
        project,
        mv,
        Ranking(tag, placements, signature=signature),
        min_conf=min_conf,
        chunk=cfg.import_chunk,
        cluster_window=cfg.cluster_window,
        superseded_grace_s=cfg.superseded_grace_s,
        progress=progress,
    )
    old = {q.item_id: q.position for q in queue}
    # tasks publishing found deleted in Label Studio left the queue: they are neither "moved" nor "next"
    live_tasks = {q.task_id for q in store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)}
    ordered = [q for q in ordered if q.task_id in live_tasks]
    placements = [p for p in placements if p.task_id in live_tasks]
    moved = moved_count([old.get(p.item_id) for p in placements])
    top = [
        {"position": pos, "was": old.get(q.item_id), "task_id": q.task_id, "item_id": q.content_id}
        for pos, q in enumerate(ordered[:10], start=1)
    ]
    return report(
        True,
        f"re-ranked with {strategy.name}",
        tag,
        moved=moved,
        top=top,
        served_after_s=round(served - started, 3),
        strategy=strategy.name,
    )
