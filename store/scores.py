"""Stored model outputs read back for selection: candidates' probabilities or boxes, embeddings, one item's full
prediction. Arrays come back as contiguous numpy arrays built from one ``b"".join`` of the blobs, so a million rows
cost one C-level copy, not a million Python objects per value."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import and_, exists, select

from store import blobs
from store.db import BATCH, Database
from store.pools import pool_items
from store.records import ClassificationScores, DetectionScores, StoredPrediction
from store.schema import Annotation, Embedding, Item, ItemPath, LSTask, Prediction, SelectionItem


def _column_ints(rows: Sequence[Any], column: int) -> NDArray[np.int64]:
    """One integer column of fetched rows as an array; ``map``/``itemgetter`` keep the loop in C."""
    return np.fromiter(map(itemgetter(column), rows), dtype=np.int64, count=len(rows))


def _column_bytes(rows: Sequence[Any], column: int) -> bytes:
    """One blob column of fetched rows concatenated in C (valid predictions always carry their blobs)."""
    return b"".join(map(itemgetter(column), rows)) if rows else b""


def _candidate_ids(pool_id: int, model_version_id: int) -> Any:
    """Items in the pool, decodable, with a valid prediction, never selected, queued or labeled before."""
    in_pool = pool_items(pool_id)
    return (
        select(in_pool.c.item_id)
        .join(Item, Item.id == in_pool.c.item_id)
        .join(
            Prediction,
            and_(Prediction.item_id == in_pool.c.item_id, Prediction.model_version_id == model_version_id),
        )
        .where(Item.status == "ok", Prediction.status == "ok")
        .where(~exists().where(SelectionItem.item_id == in_pool.c.item_id))
        .where(~exists().where(LSTask.item_id == in_pool.c.item_id))
        .where(~exists().where(Annotation.item_id == in_pool.c.item_id))
    )


class Scores:
    def __init__(self, db: Database) -> None:
        self._db = db

    def candidate_classification(self, pool_id: int, model_version_id: int) -> ClassificationScores:
        """Probabilities of every selectable item of the pool (see ``_candidate_ids``), by item id."""
        return self._classification(model_version_id, Prediction.item_id.in_(_candidate_ids(pool_id, model_version_id)))

    def candidate_detection(self, pool_id: int, model_version_id: int, n_classes: int) -> DetectionScores:
        return self._detection(
            model_version_id, n_classes, Prediction.item_id.in_(_candidate_ids(pool_id, model_version_id))
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
        with self._db.tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        ids = _column_ints(rows, 0)
        if not rows:
            return ClassificationScores(ids, np.zeros((0, 0), dtype=np.float32))
        return ClassificationScores(ids, blobs.PROBS.decode(_column_bytes(rows, 1), (len(rows), -1), writable=False))

    def _detection(self, model_version_id: int, n_classes: int, condition: Any) -> DetectionScores:
        stmt = (
            select(Prediction.item_id, Prediction.n_boxes, Prediction.box_conf, Prediction.box_scores)
            .where(Prediction.model_version_id == model_version_id, Prediction.status == "ok", condition)
            .order_by(Prediction.item_id)
        )
        with self._db.tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        return DetectionScores(
            _column_ints(rows, 0),
            _column_ints(rows, 1),
            blobs.BOX_CONF.decode(_column_bytes(rows, 2)),
            blobs.BOX_SCORES.decode(_column_bytes(rows, 3), (-1, n_classes)),
        )

    def embedded_items(self, model_version_id: int, pool_id: int | None = None) -> NDArray[np.int64]:
        """Sorted ids of the items (in the pool, if given) that have an embedding under this model version."""
        stmt = select(Embedding.item_id).where(Embedding.model_version_id == model_version_id)
        if pool_id is not None:
            stmt = stmt.where(exists().where(ItemPath.item_id == Embedding.item_id, ItemPath.pool_id == pool_id))
        with self._db.tx(write=False) as conn:
            rows = conn.execute(stmt.order_by(Embedding.item_id)).all()
        return _column_ints(rows, 0)

    def embeddings(
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
        with self._db.tx(write=False) as conn:
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
        matrix = blobs.EMBEDDING.decode(_column_bytes(rows, 1), (len(rows), dim))
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

    def prediction(self, item_id: int, model_version_id: int, n_classes: int) -> StoredPrediction | None:
        return self.predictions(model_version_id, [item_id], n_classes).get(item_id)

    def predictions(
        self, model_version_id: int, item_ids: Sequence[int], n_classes: int
    ) -> dict[int, StoredPrediction]:
        """Stored model outputs of many items, in batched queries (valid ones only)."""
        out: dict[int, StoredPrediction] = {}
        ids = list(item_ids)
        with self._db.tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(
                    select(Prediction.__table__).where(
                        Prediction.model_version_id == model_version_id,
                        Prediction.status == "ok",
                        Prediction.item_id.in_(ids[start : start + BATCH]),
                    )
                )
                for row in rows:
                    out[int(row.item_id)] = _stored(row, n_classes)
        return out


def _stored(row: Any, n_classes: int) -> StoredPrediction:
    n = row.n_boxes or 0
    return StoredPrediction(
        item_id=int(row.item_id),
        width=row.width,
        height=row.height,
        probs=None if row.probs is None else blobs.PROBS.decode(row.probs),
        boxes=blobs.BOXES.decode(row.boxes, (n, 4)),
        box_conf=blobs.BOX_CONF.decode(row.box_conf),
        box_scores=blobs.BOX_SCORES.decode(row.box_scores, (n, n_classes)),
        polygons=blobs.decode_polygons(row.polygons, n),
    )
