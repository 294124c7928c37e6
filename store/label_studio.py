"""What curate remembers about Label Studio: projects, which item is which task, the queue order, pending
imports and pulled annotations. Only SQL here, no HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, update

from store.db import BATCH, Database
from store.records import (
    LSProjectRecord,
    PendingItem,
    PullCounts,
    PulledAnnotation,
    PushIntent,
    QueuedTask,
    RecordedTask,
)
from store.schema import (
    Annotation,
    Item,
    ItemPath,
    LSProject,
    LSPushIntent,
    LSTask,
    Pool,
    Selection,
    SelectionItem,
    utcnow,
)


class LabelStudioRecords:
    """Label Studio bookkeeping; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- projects ----------------------------------------------------------------------------------------------------
    def project(self, server: str, project_id: int, title: str, task: str) -> LSProjectRecord:
        with self._db.tx() as conn:
            conn.execute(
                self._db.insert(LSProject)
                .values(server=server, project_id=project_id, title=title, task=task, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["server", "project_id"])
            )
            conn.execute(
                update(LSProject)
                .where(LSProject.server == server, LSProject.project_id == project_id)
                .values(title=title, task=task)
            )
            row = conn.execute(
                select(LSProject.__table__).where(LSProject.server == server, LSProject.project_id == project_id)
            ).one()
        return _project(row)

    def projects(self) -> list[LSProjectRecord]:
        with self._db.tx(write=False) as conn:
            return [_project(r) for r in conn.execute(select(LSProject.__table__).order_by(LSProject.id))]

    def pools(self, ls_project_id: int) -> list[str]:
        """Locations of the pools this project's selections came from, the most recently selected from first."""
        newest = func.max(Selection.id)
        stmt = (
            select(Pool.location, newest)
            .join(Selection, Selection.pool_id == Pool.id)
            .where(Selection.push_ls_project_id == ls_project_id)
            .group_by(Pool.location)
            .order_by(newest.desc())
        )
        with self._db.tx(write=False) as conn:
            return [str(r[0]) for r in conn.execute(stmt)]

    def set_ranking(self, ls_project_id: int, tag: str | None, signature: str | None) -> None:
        with self._db.tx() as conn:
            conn.execute(
                update(LSProject)
                .where(LSProject.id == ls_project_id)
                .values(active_tag=tag, ranking_signature=signature)
            )

    # -- tasks -------------------------------------------------------------------------------------------------------
    def count_tasks(self, ls_project_id: int) -> int:
        with self._db.tx(write=False) as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(LSTask).where(LSTask.ls_project_id == ls_project_id)
                ).scalar_one()
            )

    def record_tasks(self, ls_project_id: int, rows: Sequence[dict[str, Any]], intent_id: int | None = None) -> int:
        """Record imported (or reconciled) tasks and clear the import intent, atomically. Returns rows added.

        ``rows``: ``item_id``, ``task_id``, ``position``, ``cluster``, ``selection_id``. An item already mapped
        keeps its first task (a duplicate made outside curate is never adopted twice).
        """
        added = 0
        with self._db.tx() as conn:
            stmt = self._db.insert(LSTask).on_conflict_do_nothing()
            for start in range(0, len(rows), BATCH):
                chunk = [
                    {"ls_project_id": ls_project_id, "status": "queued", "pushed_at": utcnow(), **r}
                    for r in rows[start : start + BATCH]
                ]
                # what the insert will skip (either key already mapped): counted here, not with COUNT(*)
                in_project = LSTask.ls_project_id == ls_project_id
                items = set(
                    conn.execute(
                        select(LSTask.item_id).where(in_project, LSTask.item_id.in_([r["item_id"] for r in chunk]))
                    ).scalars()
                )
                tasks = set(
                    conn.execute(
                        select(LSTask.task_id).where(in_project, LSTask.task_id.in_([r["task_id"] for r in chunk]))
                    ).scalars()
                )
                for r in chunk:
                    if r["item_id"] not in items and r["task_id"] not in tasks:
                        added += 1
                        items.add(r["item_id"])
                        tasks.add(r["task_id"])
                conn.execute(stmt, chunk)
            if intent_id is not None:
                conn.execute(delete(LSPushIntent).where(LSPushIntent.id == intent_id))
        return int(added)

    def recorded(self, ls_project_id: int) -> dict[int, RecordedTask]:
        """item id → the task this database recorded for it in the project (any status)."""
        with self._db.tx(write=False) as conn:
            rows = conn.execute(
                select(LSTask.item_id, LSTask.task_id, LSTask.status).where(LSTask.ls_project_id == ls_project_id)
            )
            return {int(i): RecordedTask(int(i), int(t), str(s)) for i, t, s in rows}

    def remap_tasks(self, ls_project_id: int, moves: Mapping[int, int]) -> int:
        """Point items at another task (old task id → new task id): their task was a duplicate that is gone. The
        item is queued again without a position (the next push or reprioritize ranks it). Returns rows changed."""
        changed = 0
        with self._db.tx() as conn:
            for old, new in moves.items():
                result = conn.execute(
                    update(LSTask)
                    .where(LSTask.ls_project_id == ls_project_id, LSTask.task_id == int(old))
                    .values(task_id=int(new), status="queued", position=None, cluster=None)
                )
                changed += int(result.rowcount or 0)
        return changed

    def queue(self, ls_project_id: int, *, skipped: bool = False) -> list[QueuedTask]:
        """Queued (not yet labeled or skipped) tasks in queue order; with ``skipped``, skipped tasks too (the
        project requeues them: they stay in the ranking)."""
        statuses = ("queued", "skipped") if skipped else ("queued",)
        stmt = (
            select(LSTask.item_id, Item.content_id, LSTask.task_id, LSTask.position, LSTask.cluster)
            .join(Item, Item.id == LSTask.item_id)
            .where(LSTask.ls_project_id == ls_project_id, LSTask.status.in_(statuses))
            .order_by(LSTask.position.is_(None), LSTask.position, LSTask.id)
        )
        with self._db.tx(write=False) as conn:
            return [QueuedTask(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in conn.execute(stmt)]

    def untouched(self, ls_project_id: int) -> dict[int, int]:
        """item id → task id of the project's queued tasks that no annotation (skips included) and no selection
        ever touched: what a test set may be drawn from when the project's own tasks are the pool (``ls://``)."""
        stmt = (
            select(LSTask.item_id, LSTask.task_id)
            .where(LSTask.ls_project_id == ls_project_id, LSTask.status == "queued")
            .where(~exists().where(Annotation.item_id == LSTask.item_id))
            .where(~exists().where(SelectionItem.item_id == LSTask.item_id))
            .order_by(LSTask.item_id)
        )
        with self._db.tx(write=False) as conn:
            return {int(r[0]): int(r[1]) for r in conn.execute(stmt)}

    def task_history(self, pool_id: int | None = None) -> list[dict[str, Any]]:
        """Every task not deleted (its item in the pool, if given), oldest push first: when it was pushed, its
        status, and when it was resolved (its first labeled-or-skipped annotation's time; None while queued or when
        Label Studio gave no time)."""
        resolved = (
            select(func.min(func.coalesce(Annotation.created_at, Annotation.updated_at)))
            .where(Annotation.ls_project_id == LSTask.ls_project_id, Annotation.task_id == LSTask.task_id)
            .scalar_subquery()
        )
        stmt = (
            select(LSTask.item_id, LSTask.status, LSTask.pushed_at, resolved.label("resolved_at"))
            .where(LSTask.status != "deleted")
            .order_by(LSTask.pushed_at, LSTask.id)
        )
        if pool_id is not None:
            stmt = stmt.where(exists().where(ItemPath.item_id == LSTask.item_id, ItemPath.pool_id == pool_id))
        with self._db.tx(write=False) as conn:
            return [
                {"item_id": int(r.item_id), "status": r.status, "pushed_at": r.pushed_at, "resolved_at": r.resolved_at}
                for r in conn.execute(stmt)
            ]

    def set_positions(self, ls_project_id: int, positions: Sequence[tuple[int, int, int | None]]) -> None:
        """(item id, position, cluster) for the queued (or requeued skipped) tasks, after a ranking was written to
        Label Studio."""
        with self._db.tx() as conn:
            stmt = (
                update(LSTask)
                .where(LSTask.ls_project_id == ls_project_id, LSTask.item_id == bindparam("b_item"))
                .where(or_(LSTask.status == "queued", LSTask.status == "skipped"))  # no IN with executemany
                .values(position=bindparam("b_pos"), cluster=bindparam("b_cluster"))
            )
            for start in range(0, len(positions), BATCH):
                conn.execute(
                    stmt,
                    [{"b_item": i, "b_pos": p, "b_cluster": c} for i, p, c in positions[start : start + BATCH]],
                )

    def unkept(self, ls_project_id: int, *, skipped: bool) -> list[tuple[int, datetime | None]]:
        """(task id, when it was first labeled) of finished tasks whose prediction is not kept yet: labeled ones,
        and with ``skipped`` (the project does not requeue skips) skipped ones too."""
        statuses = ("labeled", "skipped") if skipped else ("labeled",)
        first = (
            select(func.min(func.coalesce(Annotation.created_at, Annotation.updated_at)))
            .where(Annotation.ls_project_id == LSTask.ls_project_id, Annotation.task_id == LSTask.task_id)
            .scalar_subquery()
        )
        stmt = (
            select(LSTask.task_id, first)
            .where(LSTask.ls_project_id == ls_project_id, LSTask.status.in_(statuses))
            .where(LSTask.prediction_kept.is_(False))
            .order_by(LSTask.task_id)
        )
        with self._db.tx(write=False) as conn:
            return [(int(t), at if at is None or at.tzinfo else at.replace(tzinfo=UTC)) for t, at in conn.execute(stmt)]

    def mark_kept(self, ls_project_id: int, task_ids: Sequence[int]) -> None:
        with self._db.tx() as conn:
            for start in range(0, len(task_ids), BATCH):
                part = [int(t) for t in task_ids[start : start + BATCH]]
                conn.execute(
                    update(LSTask)
                    .where(LSTask.ls_project_id == ls_project_id, LSTask.task_id.in_(part))
                    .values(prediction_kept=True)
                )

    def mark_deleted(self, ls_project_id: int, task_ids: Sequence[int]) -> int:
        """Tasks someone deleted in Label Studio leave the queue for good (their items are not pushed again)."""
        with self._db.tx() as conn:
            result = conn.execute(
                update(LSTask)
                .where(LSTask.ls_project_id == ls_project_id, LSTask.task_id.in_([int(t) for t in task_ids]))
                .values(status="deleted", position=None)
            )
            return int(result.rowcount or 0)

    # -- pending imports ---------------------------------------------------------------------------------------------
    def add_intent(self, ls_project_id: int, content_ids: Sequence[str]) -> int:
        with self._db.tx() as conn:
            return int(
                conn.execute(
                    insert(LSPushIntent)
                    .values(ls_project_id=ls_project_id, content_ids=list(content_ids), created_at=utcnow())
                    .returning(LSPushIntent.id)
                ).scalar_one()
            )

    def intents(self, ls_project_id: int) -> list[PushIntent]:
        with self._db.tx(write=False) as conn:
            rows = conn.execute(
                select(LSPushIntent.id, LSPushIntent.content_ids, LSPushIntent.created_at)
                .where(LSPushIntent.ls_project_id == ls_project_id)
                .order_by(LSPushIntent.id)
            )
            # SQLite returns naive datetimes; every time stored here is UTC
            return [PushIntent(int(i), list(c), at if at.tzinfo else at.replace(tzinfo=UTC)) for i, c, at in rows]

    def drop_intents(self, intent_ids: Sequence[int]) -> None:
        """Forget imports whose outcome is settled: their items were recorded, or they provably never arrived."""
        if not intent_ids:
            return
        with self._db.tx() as conn:
            conn.execute(delete(LSPushIntent).where(LSPushIntent.id.in_([int(i) for i in intent_ids])))

    # -- what to push ------------------------------------------------------------------------------------------------
    def pending(self, ls_project_id: int) -> list[PendingItem]:
        """Items of the selections meant for this project (or for any, made before 0004) that are not tasks of
        the project yet, oldest selection first."""

        stmt = (
            select(
                SelectionItem.item_id,
                Item.content_id,
                SelectionItem.selection_id,
                SelectionItem.rank,
                SelectionItem.score,
                SelectionItem.cluster,
                Selection.strategy,
                Selection.pool_id,
                Selection.purpose,
            )
            .join(Selection, Selection.id == SelectionItem.selection_id)
            .join(Item, Item.id == SelectionItem.item_id)
            .where(Selection.push.is_(True))
            .where(or_(Selection.push_ls_project_id == ls_project_id, Selection.push_ls_project_id.is_(None)))
            .where(~exists().where(LSTask.ls_project_id == ls_project_id, LSTask.item_id == SelectionItem.item_id))
            .order_by(SelectionItem.selection_id, SelectionItem.rank)
        )
        with self._db.tx(write=False) as conn:
            rows = conn.execute(stmt).all()
            ids = sorted({int(r[0]) for r in rows})
            paths: dict[int, list[tuple[int, str, str]]] = {}
            for start in range(0, len(ids), BATCH):
                for found in conn.execute(
                    select(ItemPath.item_id, ItemPath.pool_id, ItemPath.path, Pool.root)
                    .join(Pool, Pool.id == ItemPath.pool_id)
                    .where(ItemPath.item_id.in_(ids[start : start + BATCH]))
                    .order_by(ItemPath.path)
                ):
                    paths.setdefault(int(found[0]), []).append((int(found[1]), found[2], found[3]))
        out: list[PendingItem] = []
        seen: set[int] = set()
        for item_id, content_id, selection_id, rank, score, cluster, strategy, pool_id, purpose in rows:
            if item_id in seen:  # selected twice (possible across pools): push once
                continue
            seen.add(item_id)
            where = paths.get(int(item_id), [])
            # prefer a path in the pool the item was selected from; an item with no path left is still pushed
            # (its file vanished: the push reports it instead of silently dropping it)
            best = next((w for w in where if w[0] == pool_id), where[0] if where else None)
            out.append(
                PendingItem(
                    int(item_id),
                    content_id,
                    best[1] if best else "",
                    best[2] if best else None,
                    int(selection_id),
                    int(rank),
                    float(score),
                    cluster,
                    strategy,
                    str(purpose or "active"),
                )
            )
        return out

    # -- annotations -------------------------------------------------------------------------------------------------
    def items_for_tasks(self, ls_project_id: int, task_ids: Sequence[int]) -> dict[int, int]:
        """task id → item id for tasks curate created."""
        out: dict[int, int] = {}
        with self._db.tx(write=False) as conn:
            for start in range(0, len(task_ids), BATCH):
                rows = conn.execute(
                    select(LSTask.task_id, LSTask.item_id).where(
                        LSTask.ls_project_id == ls_project_id, LSTask.task_id.in_(task_ids[start : start + BATCH])
                    )
                )
                out.update({int(t): int(i) for t, i in rows})
        return out

    def store_annotations(
        self,
        ls_project_id: int,
        annotations: Sequence[PulledAnnotation],
        adopted_tasks: Sequence[tuple[int, int]],
        watermark: str | None,
        seen_tasks: Sequence[int] = (),
    ) -> PullCounts:
        """Upsert one page of pulled annotations, update task statuses and advance the watermark, atomically.

        ``adopted_tasks``: (item id, task id) of tasks curate finds in the project by curation_id but had not
        recorded (e.g. pushed from another database). ``seen_tasks``: every curate task of the page, with all its
        annotations in ``annotations``: a stored annotation of one of them that is missing was deleted in Label
        Studio and is forgotten (no longer a label, never trained on); a task left without any is queued again.
        """
        counts = PullCounts()
        with self._db.tx() as conn:
            if adopted_tasks:
                conn.execute(
                    self._db.insert(LSTask).on_conflict_do_nothing(),
                    [
                        {
                            "ls_project_id": ls_project_id,
                            "item_id": i,
                            "task_id": t,
                            "status": "queued",
                            "pushed_at": utcnow(),
                        }
                        for i, t in adopted_tasks
                    ],
                )
            task_ids = sorted({a.task_id for a in annotations} | {int(t) for t in seen_tasks})
            before = self._statuses(conn, ls_project_id, task_ids)
            if seen_tasks:
                keep = {a.annotation_id for a in annotations}
                for start in range(0, len(seen_tasks), BATCH):
                    part = [int(t) for t in seen_tasks[start : start + BATCH]]
                    gone = delete(Annotation).where(
                        Annotation.ls_project_id == ls_project_id,
                        Annotation.task_id.in_(part),
                        Annotation.annotation_id.not_in(keep) if keep else Annotation.annotation_id.is_not(None),
                    )
                    counts.deleted_annotations += int(conn.execute(gone).rowcount or 0)
            if annotations:
                ids = sorted({a.annotation_id for a in annotations})
                known = set(
                    conn.execute(
                        select(Annotation.annotation_id).where(
                            Annotation.ls_project_id == ls_project_id, Annotation.annotation_id.in_(ids)
                        )
                    ).scalars()
                )
                counts.new_annotations = len(ids) - len(known)
                counts.unchanged_predictions = len(
                    {
                        a.annotation_id
                        for a in annotations
                        if a.unchanged_prediction and not a.was_cancelled and a.annotation_id not in known
                    }
                )
                stmt = self._db.insert(Annotation)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["ls_project_id", "annotation_id"],
                    set_={
                        c: getattr(stmt.excluded, c)
                        for c in (
                            "was_cancelled",
                            "annotator",
                            "lead_time",
                            "labels",
                            "result",
                            "updated_at",
                            "ground_truth",
                            "unchanged_prediction",
                        )
                    },
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "ls_project_id": ls_project_id,
                            "annotation_id": a.annotation_id,
                            "task_id": a.task_id,
                            "item_id": a.item_id,
                            "was_cancelled": a.was_cancelled,
                            "annotator": a.annotator,
                            "lead_time": a.lead_time,
                            "labels": a.labels,
                            "result": a.result,
                            "created_at": a.created_at,
                            "updated_at": a.updated_at,
                            "ground_truth": a.ground_truth,
                            "unchanged_prediction": a.unchanged_prediction,
                        }
                        for a in annotations
                    ],
                )
            any_left = exists().where(Annotation.ls_project_id == ls_project_id, Annotation.task_id == LSTask.task_id)
            labeled = exists().where(
                Annotation.ls_project_id == ls_project_id,
                Annotation.task_id == LSTask.task_id,
                Annotation.was_cancelled.is_(False),
            )
            skipped = exists().where(
                Annotation.ls_project_id == ls_project_id,
                Annotation.task_id == LSTask.task_id,
                Annotation.was_cancelled.is_(True),
            )
            for start in range(0, len(task_ids), BATCH):
                part = task_ids[start : start + BATCH]
                scope = and_(LSTask.ls_project_id == ls_project_id, LSTask.task_id.in_(part))
                done = LSTask.status.in_(("labeled", "skipped"))
                # every annotation deleted in Label Studio: the task waits in the queue again (ranked next time)
                conn.execute(update(LSTask).where(scope, done, ~any_left).values(status="queued", position=None))
                # a skipped task keeps its place: where the project requeues skips it stays in the ranking
                conn.execute(update(LSTask).where(scope, skipped, ~labeled).values(status="skipped"))
                conn.execute(update(LSTask).where(scope, labeled).values(status="labeled", position=None))
            after = self._statuses(conn, ls_project_id, task_ids)
            for task, status in after.items():
                if status != before.get(task):
                    counts.labeled_tasks += status == "labeled"
                    counts.skipped_tasks += status == "skipped"
            if watermark is not None:
                conn.execute(update(LSProject).where(LSProject.id == ls_project_id).values(pulled_until=watermark))
        return counts

    @staticmethod
    def _statuses(conn: Any, ls_project_id: int, task_ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for start in range(0, len(task_ids), BATCH):
            rows = conn.execute(
                select(LSTask.task_id, LSTask.status).where(
                    LSTask.ls_project_id == ls_project_id, LSTask.task_id.in_(task_ids[start : start + BATCH])
                )
            )
            out.update({int(t): str(st) for t, st in rows})
        return out


def _project(row: Any) -> LSProjectRecord:
    return LSProjectRecord(
        id=row.id,
        server=row.server,
        project_id=row.project_id,
        title=row.title,
        task=row.task,
        active_tag=row.active_tag,
        ranking_signature=row.ranking_signature,
        pulled_until=row.pulled_until,
    )
