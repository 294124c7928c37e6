"""Labels as training data: the latest annotation of every labeled item, and the fixed train/validation split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select

from store.db import BATCH, Database
from store.records import ImportedLabel, LabeledExample
from store.schema import (
    Annotation,
    Item,
    ItemPath,
    LSProject,
    Pool,
    Split,
    TrainingBaseExample,
    TrainingExample,
    utcnow,
)


class Labels:
    def __init__(self, db: Database) -> None:
        self._db = db

    def examples(self, task: str, *, every: bool = False) -> list[LabeledExample]:
        """The latest non-cancelled annotation of every labeled item that still has a file, for ``task``; with
        ``every``, each of its non-cancelled annotations, oldest first (for a resolution rule to choose from)."""
        latest = (
            select(Annotation.item_id, func.max(Annotation.id).label("aid"))
            .where(Annotation.was_cancelled.is_(False))
            .group_by(Annotation.item_id)
            .subquery()
        )
        if every:
            latest = (
                select(Annotation.item_id, Annotation.id.label("aid"))
                .where(Annotation.was_cancelled.is_(False))
                .subquery()
            )
        first_path = select(ItemPath.item_id, func.min(ItemPath.id).label("pid")).group_by(ItemPath.item_id).subquery()
        stmt = (
            select(
                Annotation.item_id,
                Item.content_id,
                ItemPath.path,
                Pool.root,
                Annotation.labels,
                Item.width,
                Item.height,
                LSProject.server,
                LSProject.project_id,
                Annotation.source,
                Annotation.annotator,
                func.coalesce(Annotation.updated_at, Annotation.created_at),
                Annotation.ground_truth,
                Annotation.unchanged_prediction,
            )
            .join(latest, latest.c.aid == Annotation.id)
            .join(LSProject, LSProject.id == Annotation.ls_project_id, isouter=True)
            .join(Item, Item.id == Annotation.item_id)
            .join(first_path, first_path.c.item_id == Annotation.item_id)
            .join(ItemPath, ItemPath.id == first_path.c.pid)
            .join(Pool, Pool.id == ItemPath.pool_id)
            .order_by(Annotation.item_id, Annotation.id)
        )
        out = []
        with self._db.tx(write=False) as conn:
            for row in conn.execute(stmt):
                item_id, cid, path, root, labels, width, height, server, project, imported, who, when = row[:12]
                truth, unchanged = row[12:]
                if (labels or {}).get("task", task) != task:
                    continue
                full = _location(str(root), str(path))
                source = imported if server is None else f"{server.rstrip('/')}/projects/{project}"
                out.append(
                    LabeledExample(
                        int(item_id),
                        cid,
                        full,
                        dict(labels or {}),
                        width,
                        height,
                        source,
                        who,
                        when,
                        bool(truth),
                        pool_root=str(root),
                        unchanged_prediction=bool(unchanged),
                    )
                )
        return out

    def add_imported(self, rows: Sequence[ImportedLabel]) -> tuple[int, int]:
        """Store imported labels as annotations without a project, in one transaction; an item that already has a
        (non-cancelled) annotation keeps it. Returns (added, already labeled)."""
        if not rows:
            return 0, 0
        with self._db.tx() as conn:
            labeled: set[int] = set()
            ids = sorted({r.item_id for r in rows})
            for start in range(0, len(ids), BATCH):
                part = ids[start : start + BATCH]
                labeled.update(
                    int(i)
                    for i in conn.execute(
                        select(Annotation.item_id).where(
                            Annotation.item_id.in_(part), Annotation.was_cancelled.is_(False)
                        )
                    ).scalars()
                )
            fresh: dict[int, ImportedLabel] = {}
            for r in rows:
                if r.item_id not in labeled:
                    fresh[r.item_id] = r  # the last label of an item named twice in one import wins
            now = utcnow()
            values: list[dict[str, Any]] = [
                {
                    "ls_project_id": None,
                    "annotation_id": 0,
                    "task_id": 0,
                    "item_id": r.item_id,
                    "was_cancelled": False,
                    "annotator": r.annotator,
                    "labels": r.labels,
                    "result": [],
                    "source": r.source,
                    "created_at": r.annotated_at or now,
                    "updated_at": r.annotated_at or now,
                }
                for r in fresh.values()
            ]
            for start in range(0, len(values), BATCH):
                conn.execute(self._db.insert(Annotation), values[start : start + BATCH])
            return len(values), len({r.item_id for r in rows} & labeled)

    def trained_on(self, model_version_id: int) -> list[tuple[LabeledExample, str]]:
        """What a trained version was trained and validated on (recorded when it was registered), with the split:
        the labels as they were then, the item's file as it is now (its first path)."""
        first_path = select(ItemPath.item_id, func.min(ItemPath.id).label("pid")).group_by(ItemPath.item_id).subquery()
        T = TrainingExample
        stmt = (
            select(
                T.item_id,
                Item.content_id,
                ItemPath.path,
                Pool.root,
                T.labels,
                Item.width,
                Item.height,
                T.source,
                T.annotator,
                T.annotated_at,
                T.split,
            )
            .join(Item, Item.id == T.item_id)
            .join(first_path, first_path.c.item_id == T.item_id, isouter=True)
            .join(ItemPath, ItemPath.id == first_path.c.pid, isouter=True)
            .join(Pool, Pool.id == ItemPath.pool_id, isouter=True)
            .where(T.model_version_id == model_version_id)
            .order_by(T.item_id)
        )
        out = []
        with self._db.tx(write=False) as conn:
            for item_id, cid, path, root, labels, width, height, source, who, when, split in conn.execute(stmt):
                full = "" if path is None else _location(str(root), str(path))
                example = LabeledExample(
                    int(item_id), cid, full, dict(labels or {}), width, height, source, who, when, pool_root=root
                )
                out.append((example, split))
        return out

    def trained_on_base(self, model_version_id: int) -> list[tuple[LabeledExample, str]]:
        """The ``train.base_dataset`` images a trained version replayed, with their split, labels as they were and
        label source ``base``; negative item ids (they are not pool items), in the order they were recorded."""
        B = TrainingBaseExample
        stmt = select(B.content_id, B.path, B.labels, B.width, B.height, B.split).where(
            B.model_version_id == model_version_id
        )
        out = []
        with self._db.tx(write=False) as conn:
            rows = conn.execute(stmt.order_by(B.id)).all()
        for k, (cid, path, labels, width, height, split) in enumerate(rows):
            out.append((LabeledExample(-(k + 1), cid, path, dict(labels or {}), width, height, "base"), split))
        return out

    def count_trained_on(self, model_version_id: int) -> int:
        with self._db.tx(write=False) as conn:
            stmt = select(func.count()).select_from(TrainingExample)
            return int(conn.execute(stmt.where(TrainingExample.model_version_id == model_version_id)).scalar_one())

    def latest(self) -> dict[int, dict[str, Any]]:
        """item id → the normalised labels of its latest non-cancelled annotation (every labeled item, whether its
        file still exists or not)."""
        latest = (
            select(func.max(Annotation.id).label("aid"))
            .where(Annotation.was_cancelled.is_(False))
            .group_by(Annotation.item_id)
            .subquery()
        )
        stmt = select(Annotation.item_id, Annotation.labels).join(latest, latest.c.aid == Annotation.id)
        with self._db.tx(write=False) as conn:
            return {int(i): dict(labels or {}) for i, labels in conn.execute(stmt)}

    def item_ids(self) -> NDArray[np.int64]:
        """Items with at least one non-cancelled annotation, sorted."""
        stmt = select(func.distinct(Annotation.item_id)).where(Annotation.was_cancelled.is_(False))
        with self._db.tx(write=False) as conn:
            return np.array(sorted(int(r[0]) for r in conn.execute(stmt)), dtype=np.int64)

    def splits(self) -> dict[int, str]:
        with self._db.tx(write=False) as conn:
            return {int(i): s for i, s in conn.execute(select(Split.item_id, Split.split))}

    def add_splits(self, assignments: Sequence[tuple[int, str]]) -> None:
        """Record new assignments; an item never changes split once assigned."""
        if not assignments:
            return
        with self._db.tx() as conn:
            rows = [{"item_id": i, "split": s, "assigned_at": utcnow()} for i, s in assignments]
            for start in range(0, len(rows), BATCH):
                conn.execute(self._db.insert(Split).on_conflict_do_nothing(), rows[start : start + BATCH])


def _location(root: str, path: str) -> str:
    """Where an item's bytes are: the file path, ``s3://bucket/key`` of an object-store pool, or the stored
    reference itself (an ``ls://`` pool's task image, a manifest's URI line)."""
    if root.startswith("s3://"):
        return root + path
    if root.startswith("ls://") or "://" in path:
        return path
    return path if Path(path).is_absolute() else str(Path(root) / path)
