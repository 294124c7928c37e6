"""``Store``: everything curate asks of the database, in bulk.

Hot paths (scan registration, score chunks, loading scores and embeddings for selection) use Core statements with
executemany and blob columns, never per-row ORM flushes. Arrays come back as contiguous numpy arrays built from one
``b"".join`` of the blobs, so a million rows cost one C-level copy, not a million Python objects per value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, func, insert, select, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from store.db import BATCH, first_line, open_engine, redacted
from store.errors import DatabaseError
from store.ls_records import LabelStudioRecords
from store.registry_records import RegistryRecords
from store.schema import (
    Annotation,
    Embedding,
    Item,
    ItemPath,
    LSTask,
    ModelVersion,
    Pool,
    Prediction,
    ScoringRun,
    Selection,
    SelectionItem,
    utcnow,
)

MV = ModelVersion.__table__


@dataclass(frozen=True)
class KnownPath:
    item_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    content_id: str
    width: int | None = None  # from the header (EXIF-oriented), if readable
    height: int | None = None


@dataclass(frozen=True)
class ItemToScore:
    item_id: int
    path: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    version: str
    source: str
    format: str
    task: str
    class_names: list[str]
    imgsz: int
    embedding_dim: int | None
    created_at: datetime
    digest: str | None = None
    weights_path: str | None = None
    parent_id: int | None = None
    status: str = "external"
    metric_name: str | None = None
    metric_value: float | None = None
    metrics: dict[str, Any] | None = None
    dataset_hash: str | None = None
    n_labeled: int | None = None
    note: str | None = None
    trained_at: datetime | None = None


@dataclass
class ScoredChunk:
    """One chunk of scoring output, written in one transaction."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    embeddings: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    decoded: list[tuple[int, int, int]] = field(default_factory=list)  # item_id, width, height
    n_invalid: int = 0

    def __len__(self) -> int:
        return len(self.predictions) + len(self.failures)


@dataclass(frozen=True)
class ClassificationScores:
    item_ids: NDArray[np.int64]
    probs: NDArray[np.float32]  # (N, K)


@dataclass(frozen=True)
class DetectionScores:
    item_ids: NDArray[np.int64]
    n_boxes: NDArray[np.int64]  # (N,)
    box_conf: NDArray[np.float32]  # (B,)
    box_scores: NDArray[np.float32]  # (B, K)

    @property
    def box_image_index(self) -> NDArray[np.int64]:
        """Row of the image each box belongs to (aligned with ``item_ids``)."""
        return np.repeat(np.arange(len(self.item_ids), dtype=np.int64), self.n_boxes)


@dataclass(frozen=True)
class StoredPrediction:
    item_id: int
    width: int
    height: int
    probs: NDArray[np.float32] | None
    boxes: NDArray[np.float32]  # (n, 4) xyxy pixels
    box_conf: NDArray[np.float32]
    box_scores: NDArray[np.float32]  # (n, K)
    polygons: list[NDArray[np.float32]]


@dataclass(frozen=True)
class SelectedItem:
    item_id: int
    content_id: str
    path: str
    rank: int
    score: float
    cluster: int | None


def _blob(array: NDArray[Any], dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _column_ints(rows: Sequence[Any], column: int) -> NDArray[np.int64]:
    """One integer column of fetched rows as an array; ``map``/``itemgetter`` keep the loop in C."""
    return np.fromiter(map(itemgetter(column), rows), dtype=np.int64, count=len(rows))


def _column_bytes(rows: Sequence[Any], column: int) -> bytes:
    """One blob column of fetched rows concatenated in C (valid predictions always carry their blobs)."""
    return b"".join(map(itemgetter(column), rows)) if rows else b""


def encode_polygons(polygons: Sequence[NDArray[np.float32]]) -> bytes:
    counts = np.array([len(p) for p in polygons], dtype="<i4")
    points = np.concatenate([np.asarray(p, dtype="<f4").reshape(-1, 2) for p in polygons]) if polygons else []
    return counts.tobytes() + np.asarray(points, dtype="<f4").tobytes()


def decode_polygons(blob: bytes | None, n: int) -> list[NDArray[np.float32]]:
    if not blob or n == 0:
        return []
    counts = np.frombuffer(blob, dtype="<i4", count=n)
    points = np.frombuffer(blob, dtype="<f4", offset=4 * n).reshape(-1, 2)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [points[bounds[i] : bounds[i + 1]].astype(np.float32) for i in range(n)]


class Store(LabelStudioRecords, RegistryRecords):
    """Database access for one curate database (SQLite or Postgres)."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and migrate to the latest schema (first use creates the tables)."""
        return cls(open_engine(url), url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display_url(self) -> str:
        return redacted(self.url)

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Connection]:
        """A transaction; driver errors become ``DatabaseError`` naming the (redacted) database.

        ``write=False`` marks a read-only transaction: on SQLite it does not take the write lock, so ``curate
        status`` and other readers never wait for a running loop.
        """
        try:
            with self.engine.connect() as conn:
                if not write:
                    conn = conn.execution_options(curate_read_only=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database error on {self.display_url}: {first_line(exc)}") from exc

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # ------------------------------------------------------------------------------------------------------------
    # Pools and items

    def get_or_create_pool(self, location: str, kind: str, root: str) -> int:
        with self._tx() as conn:
            stmt = self._insert(Pool).values(location=location, kind=kind, root=root, created_at=utcnow())
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["location"]))
            pool_id = conn.execute(select(Pool.id).where(Pool.location == location)).scalar_one()
            conn.execute(update(Pool).where(Pool.id == pool_id).values(kind=kind, root=root))
            return int(pool_id)

    def find_pool(self, location: str) -> int | None:
        with self._tx(write=False) as conn:
            value = conn.execute(select(Pool.id).where(Pool.location == location)).scalar_one_or_none()
            return None if value is None else int(value)

    def known_paths(self, pool_id: int) -> dict[str, KnownPath]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(ItemPath.path, ItemPath.item_id, ItemPath.size, ItemPath.mtime_ns).where(
                    ItemPath.pool_id == pool_id
                )
            )
            return {r.path: KnownPath(r.item_id, r.size, r.mtime_ns) for r in rows}

    def apply_scan(self, pool_id: int, changed: Sequence[ScannedFile], gone: Iterable[str]) -> tuple[int, int]:
        """Register new/changed files and forget vanished paths. Returns (new items, paths that are duplicates)."""
        new_items = 0
        with self._tx() as conn:
            gone_list = list(gone)
            for start in range(0, len(gone_list), BATCH):
                conn.execute(
                    delete(ItemPath).where(
                        ItemPath.pool_id == pool_id, ItemPath.path.in_(gone_list[start : start + BATCH])
                    )
                )
            for start in range(0, len(changed), BATCH):
                chunk = changed[start : start + BATCH]
                contents = {f.content_id: f for f in chunk}
                known = set(conn.execute(select(Item.content_id).where(Item.content_id.in_(list(contents)))).scalars())
                new_items += len(contents) - len(known)
                conn.execute(
                    self._insert(Item).on_conflict_do_nothing(index_elements=["content_id"]),
                    [
                        {
                            "content_id": c,
                            "size": f.size,
                            "status": "new",
                            "width": f.width,
                            "height": f.height,
                            "created_at": utcnow(),
                        }
                        for c, f in contents.items()
                    ],
                )
                ids = dict(
                    conn.execute(select(Item.content_id, Item.id).where(Item.content_id.in_(list(contents)))).all()
                )
                stmt = self._insert(ItemPath)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["pool_id", "path"],
                    set_={
                        "item_id": stmt.excluded.item_id,
                        "size": stmt.excluded.size,
                        "mtime_ns": stmt.excluded.mtime_ns,
                    },
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "pool_id": pool_id,
                            "path": f.path,
                            "item_id": ids[f.content_id],
                            "size": f.size,
                            "mtime_ns": f.mtime_ns,
                        }
                        for f in chunk
                    ],
                )
            conn.execute(update(Pool).where(Pool.id == pool_id).values(scanned_at=utcnow()))
            n_paths = conn.execute(
                select(func.count()).select_from(ItemPath).where(ItemPath.pool_id == pool_id)
            ).scalar_one()
            n_items = conn.execute(
                select(func.count(func.distinct(ItemPath.item_id))).where(ItemPath.pool_id == pool_id)
            ).scalar_one()
        return new_items, int(n_paths - n_items)

    # ------------------------------------------------------------------------------------------------------------
    # Model versions

    def register_model_version(
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
        with self._tx() as conn:
            conn.execute(
                self._insert(ModelVersion)
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
            return self._mv_record(row)

    @staticmethod
    def _mv_record(row: Any, embedding_dim: int | None = None) -> ModelVersionRecord:
        return ModelVersionRecord(
            id=row.id,
            version=row.version,
            source=row.source,
            format=row.format,
            task=row.task,
            class_names=list(row.class_names),
            imgsz=row.imgsz,
            embedding_dim=embedding_dim if embedding_dim is not None else row.embedding_dim,
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

    def model_version(self, version: str) -> ModelVersionRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(MV).where(MV.c.version == version)).one_or_none()
            return None if row is None else self._mv_record(row)

    def model_versions(self) -> list[tuple[ModelVersionRecord, int]]:
        """Every model version with its number of stored predictions, newest first."""
        with self._tx(write=False) as conn:
            counts = dict(
                conn.execute(
                    select(Prediction.model_version_id, func.count()).group_by(Prediction.model_version_id)
                ).all()
            )
            rows = conn.execute(select(MV).order_by(MV.c.id.desc())).all()
            return [(self._mv_record(r), int(counts.get(r.id, 0))) for r in rows]

    # ------------------------------------------------------------------------------------------------------------
    # Scoring

    def _pool_items(self, pool_id: int) -> Any:
        """One row per item present in the pool, with its first path."""
        return (
            select(ItemPath.item_id.label("item_id"), func.min(ItemPath.path).label("path"))
            .where(ItemPath.pool_id == pool_id)
            .group_by(ItemPath.item_id)
            .subquery()
        )

    def items_to_score(self, pool_id: int, model_version_id: int, rescore: bool = False) -> list[ItemToScore]:
        """Items of the pool without a prediction under this model version (all decodable ones if rescore)."""
        pool_items = self._pool_items(pool_id)
        stmt = (
            select(pool_items.c.item_id, pool_items.c.path, Item.width, Item.height)
            .join(Item, Item.id == pool_items.c.item_id)
            .where(Item.status != "failed")
            .order_by(pool_items.c.item_id)
        )
        if not rescore:
            stmt = stmt.where(
                ~exists().where(
                    Prediction.item_id == pool_items.c.item_id,
                    Prediction.model_version_id == model_version_id,
                )
            )
        with self._tx(write=False) as conn:
            return [ItemToScore(int(r.item_id), str(r.path), r.width, r.height) for r in conn.execute(stmt)]

    def start_run(self, model_version_id: int, pool_id: int, n_todo: int, device: str, batch_size: int) -> int:
        with self._tx() as conn:
            return int(
                conn.execute(
                    insert(ScoringRun)
                    .values(
                        model_version_id=model_version_id,
                        pool_id=pool_id,
                        n_todo=n_todo,
                        device=device,
                        batch_size=batch_size,
                        status="running",
                        started_at=utcnow(),
                        n_scored=0,
                        n_failed=0,
                        n_invalid=0,
                    )
                    .returning(ScoringRun.id)
                ).scalar_one()
            )

    def write_chunk(self, run_id: int, model_version_id: int, chunk: ScoredChunk) -> None:
        """Commit one chunk of results atomically: a crash loses at most the chunk in flight."""
        with self._tx() as conn:
            if chunk.failures:
                conn.execute(
                    update(Item)
                    .where(Item.id == bindparam("b_id"))
                    .values(status="failed", failure=bindparam("b_reason")),
                    [{"b_id": i, "b_reason": r} for i, r in chunk.failures],
                )
            if chunk.decoded:
                conn.execute(
                    update(Item)
                    .where(Item.id == bindparam("b_id"))
                    .values(status="ok", failure=None, width=bindparam("b_w"), height=bindparam("b_h")),
                    [{"b_id": i, "b_w": w, "b_h": h} for i, w, h in chunk.decoded],
                )
            if chunk.predictions:
                rows = [
                    dict(p, model_version_id=model_version_id, run_id=run_id, created_at=utcnow())
                    for p in chunk.predictions
                ]
                stmt = self._insert(Prediction)
                cols = (
                    "run_id",
                    "status",
                    "problem",
                    "width",
                    "height",
                    "probs",
                    "n_boxes",
                    "boxes",
                    "box_conf",
                    "box_scores",
                    "polygons",
                    "created_at",
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["item_id", "model_version_id"],
                    set_={c: getattr(stmt.excluded, c) for c in cols},
                )
                conn.execute(stmt, rows)
            if chunk.embeddings:
                stmt = self._insert(Embedding)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["item_id", "model_version_id"], set_={"vector": stmt.excluded.vector}
                )
                conn.execute(stmt, [dict(e, model_version_id=model_version_id) for e in chunk.embeddings])
            conn.execute(
                update(ScoringRun)
                .where(ScoringRun.id == run_id)
                .values(
                    n_scored=ScoringRun.n_scored + (len(chunk.predictions) - chunk.n_invalid),
                    n_failed=ScoringRun.n_failed + len(chunk.failures),
                    n_invalid=ScoringRun.n_invalid + chunk.n_invalid,
                )
            )

    def finish_run(self, run_id: int, status: str, images_per_s: float | None) -> None:
        with self._tx() as conn:
            conn.execute(
                update(ScoringRun)
                .where(ScoringRun.id == run_id)
                .values(status=status, finished_at=utcnow(), images_per_s=images_per_s)
            )

    def close_stale_runs(self) -> int:
        """Mark runs left 'running' by a killed process as interrupted (their committed chunks stay)."""
        with self._tx() as conn:
            result = conn.execute(update(ScoringRun).where(ScoringRun.status == "running").values(status="interrupted"))
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------------------------------------------------
    # Candidates and their scores

    def _candidate_ids(self, pool_id: int, model_version_id: int) -> Any:
        """Items in the pool, decodable, with a valid prediction, never selected before."""
        pool_items = self._pool_items(pool_id)
        return (
            select(pool_items.c.item_id)
            .join(Item, Item.id == pool_items.c.item_id)
            .join(
                Prediction,
                and_(
                    Prediction.item_id == pool_items.c.item_id,
                    Prediction.model_version_id == model_version_id,
                ),
            )
            .where(Item.status == "ok", Prediction.status == "ok")
            .where(~exists().where(SelectionItem.item_id == pool_items.c.item_id))
            .where(~exists().where(LSTask.item_id == pool_items.c.item_id))
            .where(~exists().where(Annotation.item_id == pool_items.c.item_id))
        )

    def candidate_classification(self, pool_id: int, model_version_id: int) -> ClassificationScores:
        """Probabilities of every selectable item of the pool (see ``_candidate_ids``), by item id."""
        return self._classification(
            model_version_id, Prediction.item_id.in_(self._candidate_ids(pool_id, model_version_id))
        )

    def candidate_detection(self, pool_id: int, model_version_id: int, n_classes: int) -> DetectionScores:
        return self._detection(
            model_version_id, n_classes, Prediction.item_id.in_(self._candidate_ids(pool_id, model_version_id))
        )

    def classification_for(self, model_version_id: int, item_ids: Sequence[int]) -> ClassificationScores:
        """Valid probabilities of the given items (those without one are absent from the result)."""
        parts = [
            self._classification(model_version_id, Prediction.item_id.in_(list(item_ids[i : i + BATCH])))
            for i in range(0, len(item_ids), BATCH)
        ]
        parts = [p for p in parts if len(p.item_ids)]
        if not parts:
            return ClassificationScores(np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
        return ClassificationScores(
            np.concatenate([p.item_ids for p in parts]), np.concatenate([p.probs for p in parts])
        )

    def detection_for(self, model_version_id: int, item_ids: Sequence[int], n_classes: int) -> DetectionScores:
        parts = [
            self._detection(model_version_id, n_classes, Prediction.item_id.in_(list(item_ids[i : i + BATCH])))
            for i in range(0, len(item_ids), BATCH)
        ]
        return DetectionScores(
            np.concatenate([p.item_ids for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.n_boxes for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.box_conf for p in parts]) if parts else np.zeros(0, np.float32),
            np.concatenate([p.box_scores for p in parts]) if parts else np.zeros((0, n_classes), np.float32),
        )

    def _classification(self, model_version_id: int, condition: Any) -> ClassificationScores:
        stmt = (
            select(Prediction.item_id, Prediction.probs)
            .where(Prediction.model_version_id == model_version_id, Prediction.status == "ok", condition)
            .order_by(Prediction.item_id)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        ids = _column_ints(rows, 0)
        if not rows:
            return ClassificationScores(ids, np.zeros((0, 0), dtype=np.float32))
        flat = np.frombuffer(_column_bytes(rows, 1), dtype="<f4")
        return ClassificationScores(ids, flat.reshape(len(rows), -1).astype(np.float32, copy=False))

    def _detection(self, model_version_id: int, n_classes: int, condition: Any) -> DetectionScores:
        stmt = (
            select(Prediction.item_id, Prediction.n_boxes, Prediction.box_conf, Prediction.box_scores)
            .where(Prediction.model_version_id == model_version_id, Prediction.status == "ok", condition)
            .order_by(Prediction.item_id)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        ids = _column_ints(rows, 0)
        n_boxes = _column_ints(rows, 1)
        conf = np.frombuffer(_column_bytes(rows, 2), dtype="<f4").astype(np.float32)
        scores = np.frombuffer(_column_bytes(rows, 3), dtype="<f2").astype(np.float32)
        return DetectionScores(ids, n_boxes, conf, scores.reshape(-1, n_classes))

    def labeled_item_ids(self) -> NDArray[np.int64]:
        stmt = select(func.distinct(Annotation.item_id)).where(Annotation.was_cancelled.is_(False))
        with self._tx(write=False) as conn:
            return np.array(sorted(int(r[0]) for r in conn.execute(stmt)), dtype=np.int64)

    def load_embeddings(
        self, model_version_id: int, item_ids: NDArray[np.int64], dim: int
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Embeddings aligned with ``item_ids`` as one float32 (N, D) array, plus a mask of which were found."""
        out = np.zeros((len(item_ids), dim), dtype=np.float32)
        found = np.zeros(len(item_ids), dtype=bool)
        if len(item_ids) == 0:
            return out, found
        order = np.argsort(item_ids, kind="stable")
        sorted_ids = item_ids[order]
        lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
        base = select(Embedding.item_id, Embedding.vector).where(Embedding.model_version_id == model_version_id)
        rows: list[Any] = []
        with self._tx(write=False) as conn:
            if hi - lo + 1 <= 4 * len(sorted_ids):
                # Dense ids (the usual case: a whole pool): one range scan beats a huge IN list.
                stmt = base.where(Embedding.item_id.between(lo, hi)).order_by(Embedding.item_id)
                rows.extend(conn.execute(stmt).all())
            else:
                # Sparse ids (a few items of a large database): fetch only those, in bounded IN batches.
                unique = np.unique(sorted_ids)
                for start in range(0, len(unique), BATCH):
                    batch = [int(v) for v in unique[start : start + BATCH]]
                    rows.extend(conn.execute(base.where(Embedding.item_id.in_(batch))).all())
                rows.sort(key=lambda r: int(r[0]))
        if not rows:
            return out, found
        ids = _column_ints(rows, 0)
        matrix = np.frombuffer(_column_bytes(rows, 1), dtype="<f2").reshape(len(rows), dim)
        pos = np.searchsorted(ids, sorted_ids)
        pos_clipped = np.minimum(pos, len(ids) - 1)
        hit = ids[pos_clipped] == sorted_ids
        out[order[hit]] = matrix[pos_clipped[hit]]
        found[order[hit]] = True
        # Rows written before non-finite embeddings were refused count as missing (checked in blocks to bound
        # the temporary boolean array).
        for start in range(0, len(out), 65536):
            block = out[start : start + 65536]
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                block[bad] = 0.0
                found[start : start + 65536][bad] = False
        return out, found

    def reference_item_ids(self, pool_id: int | None = None) -> NDArray[np.int64]:
        """Items already taken — selected, queued in Label Studio or labeled — (in the pool, if given): diversity
        strategies cover around them and near-duplicate suppression avoids them."""
        taken = union(
            select(SelectionItem.item_id.label("item_id")),
            select(LSTask.item_id),
            select(Annotation.item_id).where(Annotation.was_cancelled.is_(False)),
        ).subquery()
        stmt = select(taken.c.item_id)
        if pool_id is not None:
            stmt = stmt.where(exists().where(ItemPath.item_id == taken.c.item_id, ItemPath.pool_id == pool_id))
        with self._tx(write=False) as conn:
            return np.array(sorted(int(r[0]) for r in conn.execute(stmt)), dtype=np.int64)

    def prediction(self, item_id: int, model_version_id: int, n_classes: int) -> StoredPrediction | None:
        return self.predictions(model_version_id, [item_id], n_classes).get(item_id)

    def predictions(
        self, model_version_id: int, item_ids: Sequence[int], n_classes: int
    ) -> dict[int, StoredPrediction]:
        """Stored model outputs of many items, in batched queries (valid ones only)."""
        out: dict[int, StoredPrediction] = {}
        ids = list(item_ids)
        with self._tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(
                    select(Prediction.__table__).where(
                        Prediction.model_version_id == model_version_id,
                        Prediction.status == "ok",
                        Prediction.item_id.in_(ids[start : start + BATCH]),
                    )
                )
                for row in rows:
                    out[int(row.item_id)] = self._stored(row, n_classes)
        return out

    @staticmethod
    def _stored(row: Any, n_classes: int) -> StoredPrediction:
        n = row.n_boxes or 0
        return StoredPrediction(
            item_id=int(row.item_id),
            width=row.width,
            height=row.height,
            probs=None if row.probs is None else np.frombuffer(row.probs, dtype="<f4").astype(np.float32),
            boxes=np.frombuffer(row.boxes or b"", dtype="<f4").reshape(n, 4).astype(np.float32),
            box_conf=np.frombuffer(row.box_conf or b"", dtype="<f4").astype(np.float32),
            box_scores=np.frombuffer(row.box_scores or b"", dtype="<f2").reshape(n, n_classes).astype(np.float32),
            polygons=decode_polygons(row.polygons, n),
        )

    # ------------------------------------------------------------------------------------------------------------
    # Selections

    def record_selection(
        self,
        *,
        pool_id: int,
        model_version_id: int,
        strategy: str,
        options: dict[str, Any],
        budget: int,
        item_ids: Sequence[int],
        scores: Sequence[float],
        clusters: Sequence[int | None] | None = None,
        push_ls_project_id: int | None = None,
    ) -> int:
        """Record a selection (meant for the Label Studio project ``push_ls_project_id``, if given) atomically: a
        crash leaves no half-recorded selection, nor one that is recorded but not marked for its push."""
        with self._tx() as conn:
            selection_id = int(
                conn.execute(
                    insert(Selection)
                    .values(
                        pool_id=pool_id,
                        model_version_id=model_version_id,
                        strategy=strategy,
                        options=options,
                        budget=budget,
                        n_selected=len(item_ids),
                        push=push_ls_project_id is not None,
                        push_ls_project_id=push_ls_project_id,
                        created_at=utcnow(),
                    )
                    .returning(Selection.id)
                ).scalar_one()
            )
            cl = list(clusters) if clusters is not None else [None] * len(item_ids)
            rows = [
                {
                    "selection_id": selection_id,
                    "item_id": int(i),
                    "rank": r + 1,
                    "score": float(s),
                    "cluster": None if c is None else int(c),
                }
                for r, (i, s, c) in enumerate(zip(item_ids, scores, cl, strict=True))
            ]
            for start in range(0, len(rows), BATCH):
                conn.execute(insert(SelectionItem), rows[start : start + BATCH])
            return selection_id

    def selection_items(self, selection_id: int) -> list[SelectedItem]:
        """The selected items in rank order, each with its path in the selection's pool (an item can be in
        several pools; paths are relative to their pool's root)."""
        in_pool = (
            select(func.min(ItemPath.path))
            .where(ItemPath.item_id == SelectionItem.item_id, ItemPath.pool_id == Selection.pool_id)
            .scalar_subquery()
        )
        stmt = (
            select(
                SelectionItem.item_id,
                Item.content_id,
                in_pool,
                SelectionItem.rank,
                SelectionItem.score,
                SelectionItem.cluster,
            )
            .join(Item, Item.id == SelectionItem.item_id)
            .join(Selection, Selection.id == SelectionItem.selection_id)
            .where(SelectionItem.selection_id == selection_id)
            .order_by(SelectionItem.rank)
        )
        with self._tx(write=False) as conn:
            return [SelectedItem(int(r[0]), r[1], r[2] or "", int(r[3]), float(r[4]), r[5]) for r in conn.execute(stmt)]

    # ------------------------------------------------------------------------------------------------------------
    # Status

    def status_counts(self, pool_id: int | None, model_version_id: int | None) -> dict[str, int]:
        with self._tx(write=False) as conn:
            if pool_id is None:
                ids = select(Item.id.label("item_id")).subquery()
                n_paths = conn.execute(select(func.count()).select_from(ItemPath)).scalar_one()
            else:
                ids = (
                    select(func.distinct(ItemPath.item_id).label("item_id"))
                    .where(ItemPath.pool_id == pool_id)
                    .subquery()
                )
                n_paths = conn.execute(
                    select(func.count()).select_from(ItemPath).where(ItemPath.pool_id == pool_id)
                ).scalar_one()
            in_pool = Item.id.in_(select(ids.c.item_id))
            total = conn.execute(select(func.count()).select_from(Item).where(in_pool)).scalar_one()
            failed = conn.execute(
                select(func.count()).select_from(Item).where(in_pool, Item.status == "failed")
            ).scalar_one()
            selected = conn.execute(
                select(func.count(func.distinct(SelectionItem.item_id))).where(
                    SelectionItem.item_id.in_(select(ids.c.item_id))
                )
            ).scalar_one()
            scored = invalid = 0
            if model_version_id is not None:
                base = (
                    select(func.count())
                    .select_from(Prediction)
                    .where(
                        Prediction.model_version_id == model_version_id,
                        Prediction.item_id.in_(select(ids.c.item_id)),
                    )
                )
                scored = conn.execute(base.where(Prediction.status == "ok")).scalar_one()
                invalid = conn.execute(base.where(Prediction.status == "invalid")).scalar_one()
            counts = {
                "items": int(total),
                "paths": int(n_paths),
                "duplicate_paths": int(n_paths - total),
                "failed": int(failed),
                "scored": int(scored),
                "invalid": int(invalid),
                "unscored": int(total - failed - scored - invalid),
                "selected": int(selected),
            }
        return {**counts, **self.ls_counts(pool_id)}

    def failures(self, pool_id: int | None, limit: int = 50) -> list[tuple[str, str]]:
        stmt = (
            select(func.min(ItemPath.path), Item.failure)
            .join(ItemPath, ItemPath.item_id == Item.id)
            .where(Item.status == "failed")
            .group_by(Item.id, Item.failure)
            .order_by(Item.id)
            .limit(limit)
        )
        if pool_id is not None:
            stmt = stmt.where(ItemPath.pool_id == pool_id)
        with self._tx(write=False) as conn:
            return [(r[0], r[1] or "") for r in conn.execute(stmt)]

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        stmt = (
            select(ScoringRun.__table__, ModelVersion.version.label("model_version"))
            .join(ModelVersion, ModelVersion.id == ScoringRun.model_version_id)
            .order_by(ScoringRun.id.desc())
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [
                {
                    "id": r.id,
                    "model_version": r.model_version,
                    "status": r.status,
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "scored": r.n_scored,
                    "failed": r.n_failed,
                    "invalid": r.n_invalid,
                    "todo": r.n_todo,
                    "device": r.device,
                    "images_per_s": r.images_per_s,
                }
                for r in conn.execute(stmt)
            ]

    def recent_selections(self, limit: int = 5) -> list[dict[str, Any]]:
        stmt = (
            select(Selection.__table__, ModelVersion.version.label("model_version"))
            .join(ModelVersion, ModelVersion.id == Selection.model_version_id)
            .order_by(Selection.id.desc())
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [
                {
                    "id": s.id,
                    "model_version": s.model_version,
                    "strategy": s.strategy,
                    "budget": s.budget,
                    "selected": s.n_selected,
                    "created_at": s.created_at,
                }
                for s in conn.execute(stmt)
            ]
