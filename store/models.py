"""The model registry: every model version a database used or trained, and which one is current.

Image encoders (``embedding.model``) are registered here too, with status ``encoder``, so that their embeddings
can sit in the ``embeddings`` table under a version id of their own. They are never a scoring model: every lookup
below except ``by_id`` and ``encoder`` leaves them out, so no listing, ``--model-version``, promotion, digest
match or push ever sees one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, update

from store.db import BATCH, Database
from store.errors import RegistryConflictError
from store.records import ModelVersionRecord, TrainedModel
from store.schema import ModelVersion, Prediction, Setting, TrainingBaseExample, TrainingExample, utcnow

MV = ModelVersion.__table__
CURRENT_KEY = "current_model_version"
ENCODER = "encoder"  # the status (and task) of an image encoder's version
NOT_ENCODER = MV.c.status != ENCODER


def _record(row: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=row.id,
        version=row.version,
        source=row.source,
        format=row.format,
        task=row.task,
        class_names=list(row.class_names),
        imgsz=row.imgsz,
        embedding_dim=row.embedding_dim,
        created_at=row.created_at,
        digest=row.digest,
        weights_path=row.weights_path,
        parent_id=row.parent_id,
        status=row.status,
        metric_name=row.metric_name,
        metric_value=row.metric_value,
        metrics=dict(row.metrics) if row.metrics else None,
        dataset_hash=row.dataset_hash,
        n_labeled=row.n_labeled,
        note=row.note,
        trained_at=row.trained_at,
    )


class ModelRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db

    def register(
        self,
        *,
        version: str,
        source: str,
        format: str,
        task: str,
        class_names: list[str],
        imgsz: int,
        embedding_dim: int | None,
        digest: str | None = None,
        weights_path: str | None = None,
    ) -> ModelVersionRecord:
        """Register a model version used for scoring (idempotent: an existing version gains only what it lacked)."""
        with self._db.tx() as conn:
            conn.execute(
                self._db.insert(ModelVersion)
                .values(
                    version=version,
                    source=source,
                    format=format,
                    task=task,
                    class_names=class_names,
                    imgsz=imgsz,
                    embedding_dim=embedding_dim,
                    digest=digest,
                    weights_path=weights_path,
                    status="external",
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["version"])
            )
            row = conn.execute(select(MV).where(MV.c.version == version)).one()
            if row.status == ENCODER:
                raise RegistryConflictError(f"model version {version!r} is the name of a registered image encoder")
            changes: dict[str, Any] = {}
            if embedding_dim is not None and row.embedding_dim != embedding_dim:
                changes["embedding_dim"] = embedding_dim
            if digest and not row.digest:
                changes["digest"] = digest
            if weights_path and not row.weights_path:
                changes["weights_path"] = weights_path
            if changes:
                conn.execute(update(ModelVersion).where(ModelVersion.id == row.id).values(**changes))
                row = conn.execute(select(MV).where(MV.c.id == row.id)).one()
            return _record(row)

    def register_trained(self, model: TrainedModel, *, promote: bool) -> ModelVersionRecord:
        """Register a trained model (and make it current if ``promote``) in one transaction: a crash leaves either
        nothing or a complete version."""
        with self._db.tx() as conn:
            mv_id = int(
                conn.execute(
                    self._db.insert(ModelVersion)
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
            rows = [
                {
                    "model_version_id": mv_id,
                    "item_id": e.item_id,
                    "split": split,
                    "labels": e.labels,
                    "source": e.source,
                    "annotator": e.annotator,
                    "annotated_at": e.annotated_at,
                }
                for e, split in model.examples
            ]
            for start in range(0, len(rows), BATCH):
                conn.execute(self._db.insert(TrainingExample), rows[start : start + BATCH])
            base = [
                {
                    "model_version_id": mv_id,
                    "content_id": e.content_id,
                    "path": e.path,
                    "split": split,
                    "labels": e.labels,
                    "width": e.width,
                    "height": e.height,
                }
                for e, split in model.base_examples
            ]
            for start in range(0, len(base), BATCH):
                conn.execute(self._db.insert(TrainingBaseExample), base[start : start + BATCH])
            if promote:
                self._set_current(conn, mv_id, None)
            return _record(conn.execute(select(MV).where(MV.c.id == mv_id)).one())

    def register_encoder(
        self, *, version: str, source: str, format: str, imgsz: int, embedding_dim: int, digest: str
    ) -> ModelVersionRecord:
        """Register an image encoder (idempotent by ``digest``, the SHA-256 of its file): a version that only
        holds embeddings, never current, never listed with the scoring models."""
        with self._db.tx() as conn:
            row = conn.execute(
                select(MV).where(MV.c.digest == digest, MV.c.status == ENCODER).order_by(MV.c.id).limit(1)
            ).one_or_none()
            if row is None:
                mv_id = conn.execute(
                    self._db.insert(ModelVersion)
                    .values(
                        version=version,
                        source=source,
                        format=format,
                        task=ENCODER,
                        class_names=[],
                        imgsz=imgsz,
                        embedding_dim=embedding_dim,
                        digest=digest,
                        weights_path=source,
                        status=ENCODER,
                        created_at=utcnow(),
                    )
                    .returning(ModelVersion.id)
                ).scalar_one()
                row = conn.execute(select(MV).where(MV.c.id == mv_id)).one()
            return _record(row)

    def encoder(self, digest: str) -> ModelVersionRecord | None:
        """The image encoder registered with this file digest (``register_encoder``)."""
        return self._one((MV.c.digest == digest) & (MV.c.status == ENCODER))

    def get(self, version: str) -> ModelVersionRecord | None:
        return self._one((MV.c.version == version) & NOT_ENCODER)

    def by_id(self, model_version_id: int) -> ModelVersionRecord | None:
        return self._one(MV.c.id == model_version_id)

    def by_digest(self, digest: str) -> ModelVersionRecord | None:
        """The first version registered with these weights."""
        return self._one((MV.c.digest == digest) & NOT_ENCODER)

    def latest_from(self, source: str) -> ModelVersionRecord | None:
        """The newest version registered from ``source`` (a weights file's resolved path, or a model spec)."""
        with self._db.tx(write=False) as conn:
            row = conn.execute(
                select(MV).where(MV.c.source == source, NOT_ENCODER).order_by(MV.c.id.desc()).limit(1)
            ).one_or_none()
            return None if row is None else _record(row)

    def latest_trained(self) -> ModelVersionRecord | None:
        with self._db.tx(write=False) as conn:
            row = conn.execute(
                select(MV).where(MV.c.trained_at.is_not(None)).order_by(MV.c.trained_at.desc(), MV.c.id.desc()).limit(1)
            ).one_or_none()
            return None if row is None else _record(row)

    def _one(self, condition: Any) -> ModelVersionRecord | None:
        with self._db.tx(write=False) as conn:
            row = conn.execute(select(MV).where(condition).order_by(MV.c.id).limit(1)).one_or_none()
            return None if row is None else _record(row)

    def versions(self) -> list[tuple[ModelVersionRecord, int]]:
        """Every model version (image encoders left out) with its number of stored predictions, newest first."""
        with self._db.tx(write=False) as conn:
            counts = dict(
                conn.execute(
                    select(Prediction.model_version_id, func.count()).group_by(Prediction.model_version_id)
                ).all()
            )
            rows = conn.execute(select(MV).where(NOT_ENCODER).order_by(MV.c.id.desc())).all()
            return [(_record(r), int(counts.get(r.id, 0))) for r in rows]

    def current(self) -> ModelVersionRecord | None:
        with self._db.tx(write=False) as conn:
            value = conn.execute(select(Setting.value).where(Setting.key == CURRENT_KEY)).scalar_one_or_none()
            if value is None:
                return None
            row = conn.execute(select(MV).where(MV.c.id == int(value))).one_or_none()
            return None if row is None else _record(row)

    def set_current(self, model_version_id: int, note: str | None = None) -> None:
        with self._db.tx() as conn:
            self._set_current(conn, model_version_id, note)

    def _set_current(self, conn: Connection, model_version_id: int, note: str | None) -> None:
        status = conn.execute(select(MV.c.status).where(MV.c.id == model_version_id)).scalar_one_or_none()
        if status == ENCODER:
            raise RegistryConflictError(f"model version #{model_version_id} is an image encoder: it cannot be current")
        conn.execute(update(ModelVersion).where(ModelVersion.status == "current").values(status="retired"))
        values: dict[str, Any] = {"status": "current"}
        if note is not None:
            values["note"] = note
        conn.execute(update(ModelVersion).where(ModelVersion.id == model_version_id).values(**values))
        conn.execute(
            self._db.insert(Setting)
            .values(key=CURRENT_KEY, value=str(model_version_id))
            .on_conflict_do_update(index_elements=["key"], set_={"value": str(model_version_id)})
        )

    def set_metrics(
        self, model_version_id: int, metric_name: str, metric_value: float, metrics: dict[str, Any]
    ) -> None:
        """Record an evaluation of an existing version (e.g. the current model on the held-out set)."""
        with self._db.tx() as conn:
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.id == model_version_id)
                .values(metric_name=metric_name, metric_value=metric_value, metrics=metrics)
            )
