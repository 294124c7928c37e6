"""The model registry, the fixed train/validation split, and the run-lock holder. Mixed into ``Store``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, func, select, update

from store.db import BATCH
from store.schema import Annotation, Item, ItemPath, LockHolder, ModelVersion, Pool, Setting, Split, utcnow

if TYPE_CHECKING:
    from store.repository import ModelVersionRecord

CURRENT_KEY = "current_model_version"


@dataclass(frozen=True)
class LabeledExample:
    item_id: int
    content_id: str
    path: str  # absolute
    labels: dict[str, Any]
    width: int | None
    height: int | None


@dataclass(frozen=True)
class TrainedModel:
    """Everything a trained model version is registered with, in one transaction."""

    version: str
    weights_path: str
    digest: str
    format: str
    task: str
    class_names: list[str]
    imgsz: int
    parent_id: int | None
    metric_name: str
    metric_value: float
    metrics: dict[str, Any]
    dataset_hash: str
    n_labeled: int
    note: str


class RegistryRecords:
    dialect: str

    def _tx(self, write: bool = True) -> AbstractContextManager[Connection]:  # provided by Store
        raise NotImplementedError

    def _insert(self, table: Any) -> Any:  # provided by Store
        raise NotImplementedError

    @staticmethod
    def _mv_record(row: Any, embedding_dim: int | None = None) -> ModelVersionRecord:  # provided by Store
        raise NotImplementedError

    # -- current model -----------------------------------------------------------------------------------------------
    def current_model(self) -> ModelVersionRecord | None:
        with self._tx(write=False) as conn:
            value = conn.execute(select(Setting.value).where(Setting.key == CURRENT_KEY)).scalar_one_or_none()
            if value is None:
                return None
            row = conn.execute(select(ModelVersion.__table__).where(ModelVersion.id == int(value))).one_or_none()
            return None if row is None else self._mv_record(row)

    def set_current(self, model_version_id: int, note: str | None = None) -> None:
        with self._tx() as conn:
            self._set_current(conn, model_version_id, note)

    def _set_current(self, conn: Connection, model_version_id: int, note: str | None) -> None:
        conn.execute(update(ModelVersion).where(ModelVersion.status == "current").values(status="retired"))
        values: dict[str, Any] = {"status": "current"}
        if note is not None:
            values["note"] = note
        conn.execute(update(ModelVersion).where(ModelVersion.id == model_version_id).values(**values))
        conn.execute(
            self._insert(Setting)
            .values(key=CURRENT_KEY, value=str(model_version_id))
            .on_conflict_do_update(index_elements=["key"], set_={"value": str(model_version_id)})
        )

    def register_trained(self, model: TrainedModel, *, promote: bool) -> ModelVersionRecord:
        """Register a trained model (and make it current if ``promote``) in one transaction: a crash leaves either
        nothing or a complete version."""
        with self._tx() as conn:
            mv_id = int(
                conn.execute(
                    self._insert(ModelVersion)
                    .values(
                        version=model.version,
                        source=model.weights_path,
                        format=model.format,
                        task=model.task,
                        class_names=model.class_names,
                        imgsz=model.imgsz,
                        embedding_dim=None,
                        digest=model.digest,
                        weights_path=model.weights_path,
                        parent_id=model.parent_id,
                        status="candidate",
                        metric_name=model.metric_name,
                        metric_value=model.metric_value,
                        metrics=model.metrics,
                        dataset_hash=model.dataset_hash,
                        n_labeled=model.n_labeled,
                        note=model.note,
                        trained_at=utcnow(),
                        created_at=utcnow(),
                    )
                    .returning(ModelVersion.id)
                ).scalar_one()
            )
            if promote:
                self._set_current(conn, mv_id, None)
            row = conn.execute(select(ModelVersion.__table__).where(ModelVersion.id == mv_id)).one()
            return self._mv_record(row)

    def model_version_by_digest(self, digest: str) -> ModelVersionRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(ModelVersion.__table__).where(ModelVersion.digest == digest).order_by(ModelVersion.id).limit(1)
            ).one_or_none()
            return None if row is None else self._mv_record(row)

    def model_version_by_id(self, model_version_id: int) -> ModelVersionRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(ModelVersion.__table__).where(ModelVersion.id == model_version_id)).one_or_none()
            return None if row is None else self._mv_record(row)

    def latest_trained(self) -> ModelVersionRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(ModelVersion.__table__)
                .where(ModelVersion.trained_at.is_not(None))
                .order_by(ModelVersion.trained_at.desc(), ModelVersion.id.desc())
                .limit(1)
            ).one_or_none()
            return None if row is None else self._mv_record(row)

    def set_model_metrics(
        self, model_version_id: int, metric_name: str, metric_value: float, metrics: dict[str, Any]
    ) -> None:
        """Record an evaluation of an existing version (e.g. the current model on the held-out set)."""
        with self._tx() as conn:
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.id == model_version_id)
                .values(metric_name=metric_name, metric_value=metric_value, metrics=metrics)
            )

    # -- labeled data and the split ----------------------------------------------------------------------------------
    def labeled_examples(self, task: str) -> list[LabeledExample]:
        """The latest non-cancelled annotation of every labeled item that still has a file, for ``task``."""
        latest = (
            select(Annotation.item_id, func.max(Annotation.id).label("aid"))
            .where(Annotation.was_cancelled.is_(False))
            .group_by(Annotation.item_id)
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
            )
            .join(latest, latest.c.aid == Annotation.id)
            .join(Item, Item.id == Annotation.item_id)
            .join(first_path, first_path.c.item_id == Annotation.item_id)
            .join(ItemPath, ItemPath.id == first_path.c.pid)
            .join(Pool, Pool.id == ItemPath.pool_id)
            .order_by(Annotation.item_id)
        )
        from pathlib import Path

        out = []
        with self._tx(write=False) as conn:
            for item_id, content_id, path, root, labels, width, height in conn.execute(stmt):
                if (labels or {}).get("task", task) != task:
                    continue
                full = path if Path(path).is_absolute() else str(Path(root) / path)
                out.append(LabeledExample(int(item_id), content_id, full, dict(labels or {}), width, height))
        return out

    def splits(self) -> dict[int, str]:
        with self._tx(write=False) as conn:
            return {int(i): s for i, s in conn.execute(select(Split.item_id, Split.split))}

    def add_splits(self, assignments: Sequence[tuple[int, str]]) -> None:
        """Record new assignments; an item never changes split once assigned."""
        if not assignments:
            return
        with self._tx() as conn:
            rows = [{"item_id": i, "split": s, "assigned_at": utcnow()} for i, s in assignments]
            for start in range(0, len(rows), BATCH):
                conn.execute(self._insert(Split).on_conflict_do_nothing(), rows[start : start + BATCH])

    # -- lock holder (Postgres) --------------------------------------------------------------------------------------
    def record_lock_holder(self, conn: Connection, name: str, pid: int, host: str, command: str) -> None:
        conn.execute(delete(LockHolder).where(LockHolder.name == name))
        conn.execute(
            self._insert(LockHolder).values(name=name, pid=pid, host=host, command=command, started_at=utcnow())
        )

    def lock_holder(self, name: str) -> tuple[int, str, str, datetime] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(LockHolder.pid, LockHolder.host, LockHolder.command, LockHolder.started_at).where(
                    and_(LockHolder.name == name)
                )
            ).one_or_none()
            return None if row is None else (int(row[0]), row[1], row[2], row[3])
