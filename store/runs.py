"""Scoring runs and what they write: every chunk of model outputs lands here in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Select, bindparam, exists, func, insert, select, update

from store import blobs
from store.db import Database
from store.items import to_signed
from store.pools import resolve_pending
from store.records import ScoredChunk
from store.schema import Embedding, Item, ItemPath, ModelVersion, Prediction, ScoringRun, utcnow

_PREDICTION_COLUMNS = (
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


class Runs:
    def __init__(self, db: Database) -> None:
        self._db = db

    def start(self, model_version_id: int, pool_id: int, n_todo: int, device: str, batch_size: int) -> int:
        with self._db.tx() as conn:
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

    def write_chunk(self, run_id: int, model_version_id: int, chunk: ScoredChunk) -> dict[int, int]:
        """Commit one chunk of results atomically: a crash loses at most the chunk in flight. Pending items the
        chunk read are resolved to their content ids first, in the same transaction; returns how they were
        resolved (pending item id → the item the result was stored under)."""
        with self._db.tx() as conn:
            moved = resolve_pending(conn, chunk.resolved)
            if moved:  # duplicates found now: one result per item (the same content gives the same result)
                scored = {moved.get(s.item_id, s.item_id): s for s in chunk.scored}
                failures = {moved.get(i, i): r for i, r in chunk.failures}
                chunk = ScoredChunk(
                    scored=[replace(s, item_id=i) for i, s in scored.items()],
                    failures=[(i, r) for i, r in failures.items() if i not in scored],
                )
            self._write(conn, run_id, model_version_id, chunk)
        return moved

    def _write(self, conn: Any, run_id: int, model_version_id: int, chunk: ScoredChunk) -> None:
        now = utcnow()
        predictions = [
            {
                "item_id": s.item_id,
                "model_version_id": model_version_id,
                "run_id": run_id,
                "status": "invalid" if s.problem else "ok",
                "problem": s.problem,
                "width": s.width,
                "height": s.height,
                "created_at": now,
                **blobs.prediction_columns(s.probs, s.boxes, s.box_conf, s.box_scores, s.polygons),
            }
            for s in chunk.scored
        ]
        embeddings = []
        for s in chunk.scored:
            # an invalid output's embedding is as untrustworthy as its scores
            vector = None if s.embedding is None or s.problem else blobs.EMBEDDING.encode_finite(s.embedding)
            if vector is not None:
                embeddings.append({"item_id": s.item_id, "model_version_id": model_version_id, "vector": vector})
        if chunk.failures:
            conn.execute(
                update(Item).where(Item.id == bindparam("b_id")).values(status="failed", failure=bindparam("b_reason")),
                [{"b_id": i, "b_reason": r} for i, r in chunk.failures],
            )
        if chunk.scored:
            conn.execute(
                update(Item)
                .where(Item.id == bindparam("b_id"))
                .values(status="ok", failure=None, width=bindparam("b_w"), height=bindparam("b_h")),
                [{"b_id": s.item_id, "b_w": s.width, "b_h": s.height} for s in chunk.scored],
            )
            hashed = [(s.item_id, s.phash) for s in chunk.scored if s.phash is not None]
            if hashed:
                conn.execute(
                    update(Item).where(Item.id == bindparam("b_id")).values(phash=bindparam("b_hash")),
                    [{"b_id": i, "b_hash": to_signed(h)} for i, h in hashed],
                )
            stmt = self._db.insert(Prediction)
            stmt = stmt.on_conflict_do_update(
                index_elements=["item_id", "model_version_id"],
                set_={c: getattr(stmt.excluded, c) for c in _PREDICTION_COLUMNS},
            )
            conn.execute(stmt, predictions)
        if embeddings:
            stmt = self._db.insert(Embedding)
            stmt = stmt.on_conflict_do_update(
                index_elements=["item_id", "model_version_id"], set_={"vector": stmt.excluded.vector}
            )
            conn.execute(stmt, embeddings)
        conn.execute(
            update(ScoringRun)
            .where(ScoringRun.id == run_id)
            .values(
                n_scored=ScoringRun.n_scored + chunk.n_valid,
                n_failed=ScoringRun.n_failed + len(chunk.failures),
                n_invalid=ScoringRun.n_invalid + chunk.n_invalid,
            )
        )

    def write_embeddings(
        self,
        model_version_id: int,
        vectors: Sequence[tuple[int, NDArray[np.float32]]],
        failures: Sequence[tuple[int, str]] = (),
    ) -> int:
        """Commit one chunk of an image encoder's embeddings (and the items it found undecodable, marked failed as
        scoring marks them) in one transaction; a vector that is not finite as stored is left out. Returns how many
        vectors were stored. No scoring run is recorded: an encoder has no predictions."""
        rows = []
        for item_id, vector in vectors:
            blob = blobs.EMBEDDING.encode_finite(vector)
            if blob is not None:
                rows.append({"item_id": int(item_id), "model_version_id": model_version_id, "vector": blob})
        with self._db.tx() as conn:
            if failures:
                conn.execute(
                    update(Item)
                    .where(Item.id == bindparam("b_id"))
                    .values(status="failed", failure=bindparam("b_reason")),
                    [{"b_id": i, "b_reason": r} for i, r in failures],
                )
            if rows:
                stmt = self._db.insert(Embedding)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["item_id", "model_version_id"], set_={"vector": stmt.excluded.vector}
                )
                conn.execute(stmt, rows)
        return len(rows)

    def finish(self, run_id: int, status: str, images_per_s: float | None) -> None:
        with self._db.tx() as conn:
            conn.execute(
                update(ScoringRun)
                .where(ScoringRun.id == run_id)
                .values(status=status, finished_at=utcnow(), images_per_s=images_per_s)
            )

    def close_stale(self) -> int:
        """Mark runs left 'running' as interrupted (their committed chunks stay). Only the holder of the run lock
        may call this (``store.lock.RunLock`` does): anyone else could be closing a live run."""
        with self._db.tx() as conn:
            result = conn.execute(update(ScoringRun).where(ScoringRun.status == "running").values(status="interrupted"))
            return int(result.rowcount or 0)

    def recent(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest runs first (``curate status``)."""
        with self._db.tx(write=False) as conn:
            return [_run_row(r) for r in conn.execute(_runs().order_by(ScoringRun.id.desc()).limit(limit))]

    def history(self, pool_id: int | None = None) -> list[dict[str, Any]]:
        """Every scoring run (of the pool, if given), oldest first: the time axis of ``curate report``."""
        stmt = _runs().order_by(ScoringRun.id)
        if pool_id is not None:
            stmt = stmt.where(ScoringRun.pool_id == pool_id)
        with self._db.tx(write=False) as conn:
            return [_run_row(r) for r in conn.execute(stmt)]

    def first_scored(self, pool_id: int | None = None) -> dict[int | None, int]:
        """run id → how many items (of the pool, if given) got their first valid prediction, from any model, in
        that run (None: runs since deleted). One aggregate row per run, whatever the pool's size."""
        first = select(Prediction.item_id, func.min(Prediction.run_id).label("run_id")).where(Prediction.status == "ok")
        if pool_id is not None:
            first = first.where(exists().where(ItemPath.item_id == Prediction.item_id, ItemPath.pool_id == pool_id))
        sub = first.group_by(Prediction.item_id).subquery()
        stmt = select(sub.c.run_id, func.count()).group_by(sub.c.run_id)
        with self._db.tx(write=False) as conn:
            return {None if r is None else int(r): int(n) for r, n in conn.execute(stmt)}


def _runs() -> Select[Any]:
    """Scoring runs with their model version's name."""
    return select(ScoringRun.__table__, ModelVersion.version.label("model_version")).join(
        ModelVersion, ModelVersion.id == ScoringRun.model_version_id
    )


def _run_row(r: Any) -> dict[str, Any]:
    return {
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
