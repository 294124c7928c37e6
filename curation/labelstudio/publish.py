"""Publishing a ranking: the one sequence that makes Label Studio's label stream serve curate's queue order.

The queue contract (open-source Label Studio): with sampling "Uncertainty sampling", the label stream serves the
task whose prediction — among predictions whose ``model_version`` equals the project's ``model_version`` — has
the lowest ``score``. So a ranking is one prediction per queued task under a ranking tag (``tags.make_tag``) with
``score`` = the model's confidence, kept increasing along the queue (``formats.queue_scores``); publishing it is:

1. write the predictions the tasks do not carry yet (in bulk; tasks deleted in Label Studio leave the queue),
2. switch the project to the tag (from here on the new order is served),
3. record the positions and the ranking here,
4. set ``cluster`` on the head of the queue (only with ``label_studio.cluster_window``: bulk imports drop it),
5. keep the prediction each newly finished task was labeled with, as a copy under the model's own version
   (``keep_finished_predictions``): review and agreement views compare annotations with it,
6. delete curate's other tags once they were superseded ``label_studio.superseded_grace_s`` ago (a labeler may
   still be looking at a task pre-labeled from one), so that the Data Manager's score column stays true.

``push`` (new tasks appended, or the whole queue re-tagged) and ``reprioritize`` both publish through here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from curation.errors import LabelStudioError
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.formats import ranking_prediction
from curation.labelstudio.project import ProjectHandle
from curation.labelstudio.tags import parse_tag
from curation.labelstudio.tasks import task_ids
from curation.progress import Progress
from store import Store
from store.records import ModelVersionRecord

CLUSTER_REQUESTS = 4  # concurrent cluster PATCHes: ~1.7x faster against a 2-core server, more on larger ones


@dataclass(frozen=True)
class Placement:
    """A queued task's place in a ranking."""

    item_id: int
    task_id: int
    position: int
    cluster: int | None
    score: float
    """The prediction score Label Studio ranks by (``formats.queue_scores``)."""


@dataclass(frozen=True)
class Ranking:
    tag: str
    placements: Sequence[Placement]
    written: frozenset[int] = field(default_factory=frozenset)
    """Task ids that already carry their prediction under ``tag`` (imported with it): not written again, and
    their positions are recorded already."""
    signature: str | None = None
    """What the ranking was computed from (``rank.ranking_signature``); None: the next reprioritize re-ranks."""


def publish(
    store: Store,
    ls: LabelStudioAPI,
    project: ProjectHandle,
    mv: ModelVersionRecord,
    ranking: Ranking,
    *,
    min_conf: float,
    chunk: int,
    cluster_window: int,
    progress: Progress,
    superseded_grace_s: float = 0.0,
) -> float:
    """Make the label stream serve ``ranking`` (see the module docstring). Returns the ``time.perf_counter()``
    at which it did: the rest (clusters, cleanup) does not change what is served first."""
    pid = project.record.project_id
    fresh = [p for p in ranking.placements if p.task_id not in ranking.written]
    write_predictions(store, ls, project, mv, ranking.tag, fresh, min_conf=min_conf, chunk=chunk, progress=progress)
    if project.live_tag != ranking.tag:
        ls.set_ranking(pid, ranking.tag)
        project.remote["model_version"] = ranking.tag
    served = time.perf_counter()
    store.label_studio.set_positions(project.record.id, [(p.item_id, p.position, p.cluster) for p in fresh])
    store.label_studio.set_ranking(project.record.id, ranking.tag, ranking.signature)
    set_clusters(ls, ranking.tag, ranking.placements, cluster_window)
    keep_finished_predictions(store, ls, project)
    drop_other_tags(ls, pid, ranking.tag, grace_s=superseded_grace_s)
    return served


def write_predictions(
    store: Store,
    ls: LabelStudioAPI,
    project: ProjectHandle,
    mv: ModelVersionRecord,
    tag: str,
    placements: Sequence[Placement],
    *,
    min_conf: float,
    chunk: int,
    progress: Progress,
) -> None:
    """One prediction per placement under ``tag``, in bulk. One deleted task fails a whole bulk write: the tasks
    that are gone are found, leave the queue, and the rest is written again."""
    if not placements:
        return
    size = max(100, chunk * 2)
    progress.start(f"writing {len(placements)} predictions", len(placements))
    try:
        for start in range(0, len(placements), size):
            part = placements[start : start + size]
            stored = store.scores.predictions(mv.id, [p.item_id for p in part], len(mv.class_names))
            preds = [
                {
                    "task": p.task_id,
                    **ranking_prediction(tag, p.score, stored.get(p.item_id), mv, project.ui, min_conf),
                }
                for p in part
            ]
            try:
                ls.import_predictions(project.record.project_id, preds)
            except LabelStudioError as exc:
                if exc.status != 400:
                    raise
                existing = task_ids(ls, project.record.project_id)
                gone = [int(p["task"]) for p in preds if p["task"] not in existing]
                if not gone:
                    raise
                store.label_studio.mark_deleted(project.record.id, gone)
                progress.warn(f"{len(gone)} queued task(s) were deleted in Label Studio; they leave the queue")
                ls.import_predictions(project.record.project_id, [p for p in preds if p["task"] in existing])
            progress.advance(len(part))
    finally:
        progress.finish()


def set_clusters(ls: LabelStudioAPI, tag: str, placements: Sequence[Placement], window: int) -> None:
    """Bulk imports drop ``cluster``; PATCH sets it, one request per prediction (Label Studio spends 60-100 ms of
    server time on each, plus a lookup of the prediction's id), so only for the first ``window`` queue positions,
    where annotators are served next, and a few requests at a time."""
    jobs = [(p.task_id, p.cluster) for p in placements if p.cluster is not None and p.position <= window]
    if not jobs:
        return

    def set_one(job: tuple[int, int]) -> None:
        task_id, cluster = job
        for pred in ls.task_predictions(task_id):
            if pred.get("model_version") == tag and pred.get("task") == task_id:
                ls.set_cluster(int(pred["id"]), cluster)
                return  # none found: the task was deleted meanwhile

    set_one(jobs[0])  # one alone first: the client authenticates (or refreshes its token) once
    with ThreadPoolExecutor(max_workers=CLUSTER_REQUESTS) as pool:
        for _ in pool.map(set_one, jobs[1:]):
            pass  # re-raises the first failure


def keep_finished_predictions(store: Store, ls: LabelStudioAPI, project: ProjectHandle) -> int:
    """Copy the ranking prediction each finished task (labeled; skipped where the project does not requeue skips)
    was labeled with under the plain model version (``best-5d6a5fe0ba5b``), which curate never deletes: that is
    the model output the label was made against. The one it was labeled with is the newest curate ranking older
    than the task's first annotation (else the oldest it carries). One lookup per task finished since the last
    ranking, one bulk write. Returns the predictions kept."""
    done = store.label_studio.unkept(project.record.id, skipped=not project.requeues_skipped)
    if not done:
        return 0

    def copy_of(job: tuple[int, datetime | None]) -> dict[str, Any] | None:
        task_id, labeled_at = job
        ours = [
            (tag, p)
            for p in ls.task_predictions(task_id)
            if p.get("task") == task_id and (tag := parse_tag(p.get("model_version"))) is not None
        ]
        if not ours:
            return None
        ours.sort(key=lambda found: found[0].created)
        before = [found for found in ours if labeled_at is None or found[0].created <= labeled_at]
        tag, pred = before[-1] if before else ours[0]
        return {
            "task": task_id,
            "model_version": tag.model_version,
            "score": pred.get("score"),
            "result": pred.get("result") or [],
        }

    with ThreadPoolExecutor(max_workers=CLUSTER_REQUESTS) as pool:
        copies = [c for c in pool.map(copy_of, done) if c is not None]
    if copies:
        ls.import_predictions(project.record.project_id, copies)
    store.label_studio.mark_kept(project.record.id, [t for t, _ in done])
    return len(copies)


def drop_other_tags(
    ls: LabelStudioAPI, project_id: int, keep: str, *, grace_s: float = 0.0, now: datetime | None = None
) -> list[str]:
    """Delete the predictions of every other curate ranking (never another tool's model versions) superseded at
    least ``grace_s`` ago: a task a labeler opened before a re-rank was pre-labeled from its old prediction, and
    Label Studio refuses to store the submission (400, ``parent_prediction`` does not exist) once that prediction
    is gone. Returns the tags deleted."""
    now = now or datetime.now(UTC)
    ours = sorted(
        (
            (parsed.created, tag, count)
            for tag, count in ls.model_versions(project_id).items()
            if (parsed := parse_tag(tag))
        ),
    )
    dropped = []
    for k, (_, tag, count) in enumerate(ours):
        if tag == keep:
            continue
        superseded = ours[k + 1][0] if k + 1 < len(ours) else now
        if (now - superseded).total_seconds() >= grace_s:
            ls.delete_model_version(project_id, tag, count)
            dropped.append(tag)
    return dropped
