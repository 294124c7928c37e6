"""Items across pools: what is left to score, which are taken, which failed, and the counts ``curate status``
shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import exists, func, select, union

from store.db import BATCH, Database
from store.pools import pool_items
from store.records import ItemToScore
from store.schema import Annotation, Embedding, Item, ItemPath, LSTask, Pool, Prediction, SelectionItem


def to_signed(phash: int) -> int:
    """A 64-bit unsigned perceptual hash as the signed 64-bit integer a BIGINT column holds (same bits)."""
    return phash - (1 << 64) if phash >= 1 << 63 else phash


class Items:
    def __init__(self, db: Database) -> None:
        self._db = db

    def to_score(self, pool_id: int, model_version_id: int, rescore: bool = False) -> list[ItemToScore]:
        """Items of the pool without a prediction under this model version (all decodable ones if rescore)."""
        in_pool = pool_items(pool_id)
        stmt = (
            select(in_pool.c.item_id, in_pool.c.path, Item.width, Item.height, Item.content_id)
            .join(Item, Item.id == in_pool.c.item_id)
            .where(Item.status != "failed")
            .order_by(in_pool.c.item_id)
        )
        if not rescore:
            stmt = stmt.where(
                ~exists().where(
                    Prediction.item_id == in_pool.c.item_id,
                    Prediction.model_version_id == model_version_id,
                )
            )
        with self._db.tx(write=False) as conn:
            return [
                ItemToScore(int(r.item_id), str(r.path), r.width, r.height, r.content_id) for r in conn.execute(stmt)
            ]

    def any_to_score(self, pool_id: int, model_version_id: int) -> bool:
        """Whether ``to_score`` would return anything: one EXISTS over the pool's paths, without grouping them by
        item (what an idle cron turn asks of a large pool)."""
        stmt = (
            select(ItemPath.item_id)
            .join(Item, Item.id == ItemPath.item_id)
            .where(
                ItemPath.pool_id == pool_id,
                Item.status != "failed",
                ~exists().where(
                    Prediction.item_id == ItemPath.item_id, Prediction.model_version_id == model_version_id
                ),
            )
            .limit(1)
        )
        with self._db.tx(write=False) as conn:
            return conn.execute(stmt).first() is not None

    def to_embed(self, pool_id: int, model_version_id: int) -> list[ItemToScore]:
        """Items of the pool that scoring decoded (status ok) without an embedding under this version (an image
        encoder's): unreadable items stay out, and so do items scoring has not read yet."""
        in_pool = pool_items(pool_id)
        stmt = (
            select(in_pool.c.item_id, in_pool.c.path, Item.width, Item.height, Item.content_id)
            .join(Item, Item.id == in_pool.c.item_id)
            .where(Item.status == "ok")
            .where(
                ~exists().where(Embedding.item_id == in_pool.c.item_id, Embedding.model_version_id == model_version_id)
            )
            .order_by(in_pool.c.item_id)
        )
        with self._db.tx(write=False) as conn:
            return [
                ItemToScore(int(r.item_id), str(r.path), r.width, r.height, r.content_id) for r in conn.execute(stmt)
            ]

    def any_to_embed(self, pool_id: int, model_version_id: int) -> bool:
        """Whether ``to_embed`` would return anything: one EXISTS, as ``any_to_score``."""
        stmt = (
            select(ItemPath.item_id)
            .join(Item, Item.id == ItemPath.item_id)
            .where(
                ItemPath.pool_id == pool_id,
                Item.status == "ok",
                ~exists().where(Embedding.item_id == ItemPath.item_id, Embedding.model_version_id == model_version_id),
            )
            .limit(1)
        )
        with self._db.tx(write=False) as conn:
            return conn.execute(stmt).first() is not None

    def by_content(self, content_ids: Sequence[str]) -> dict[str, int]:
        """content id → item id, for the content ids the database knows."""
        out: dict[str, int] = {}
        with self._db.tx(write=False) as conn:
            for start in range(0, len(content_ids), BATCH):
                rows = conn.execute(
                    select(Item.content_id, Item.id).where(Item.content_id.in_(content_ids[start : start + BATCH]))
                )
                out.update({c: int(i) for c, i in rows})
        return out

    def content_ids(self, item_ids: Sequence[int]) -> list[str]:
        """Each item's content id, aligned with ``item_ids`` (``""`` for an unknown id)."""
        found: dict[int, str] = {}
        ids = [int(i) for i in item_ids]
        with self._db.tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(select(Item.id, Item.content_id).where(Item.id.in_(ids[start : start + BATCH])))
                found.update({int(i): str(c) for i, c in rows})
        return [found.get(i, "") for i in ids]

    def paths(self, pool_id: int, item_ids: Sequence[int]) -> list[str]:
        """Each item's path in the pool (relative to its root; the first if it has several), aligned with
        ``item_ids``; ``""`` for an item that is not in the pool."""
        found: dict[int, str] = {}
        ids = [int(i) for i in item_ids]
        with self._db.tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(
                    select(ItemPath.item_id, func.min(ItemPath.path))
                    .where(ItemPath.pool_id == pool_id, ItemPath.item_id.in_(ids[start : start + BATCH]))
                    .group_by(ItemPath.item_id)
                )
                found.update({int(i): str(path) for i, path in rows})
        return [found.get(i, "") for i in ids]

    def taken(self, pool_id: int | None = None) -> NDArray[np.int64]:
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
        with self._db.tx(write=False) as conn:
            return np.array(sorted(int(r[0]) for r in conn.execute(stmt)), dtype=np.int64)

    def phashes(self, item_ids: Sequence[int]) -> tuple[NDArray[np.uint64], NDArray[np.bool_]]:
        """Each item's perceptual hash (unsigned 64-bit, the bits ``perceptual_hash`` computed), aligned with
        ``item_ids``, and whether it has one (items decoded before migration 0009 get theirs when scored again)."""
        ids = [int(i) for i in item_ids]
        found: dict[int, int] = {}
        with self._db.tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                rows = conn.execute(
                    select(Item.id, Item.phash).where(Item.id.in_(ids[start : start + BATCH]), Item.phash.is_not(None))
                )
                found.update({int(i): int(h) for i, h in rows if h is not None})
        signed = np.array([found.get(i, 0) for i in ids], dtype=np.int64)
        return signed.view(np.uint64), np.array([i in found for i in ids], dtype=bool)

    def failures(self, pool_id: int | None, limit: int = 50) -> list[tuple[str, str]]:
        """(path, reason) of items that could not be decoded."""
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
        with self._db.tx(write=False) as conn:
            return [(r[0], r[1] or "") for r in conn.execute(stmt)]

    def counts(self, pool_id: int | None, model_version_id: int | None) -> dict[str, int]:
        """Items, paths, failed/scored/invalid/unscored/selected, and queued/skipped/labeled in Label Studio (in
        the pool, if given), read in one snapshot."""
        with self._db.tx(write=False) as conn:
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

            def tasks(status: str) -> int:
                stmt = select(func.count(func.distinct(LSTask.item_id))).where(LSTask.status == status)
                if pool_id is not None:
                    stmt = stmt.where(exists().where(ItemPath.item_id == LSTask.item_id, ItemPath.pool_id == pool_id))
                return int(conn.execute(stmt).scalar_one())

            labeled = select(func.count(func.distinct(Annotation.item_id))).where(Annotation.was_cancelled.is_(False))
            if pool_id is not None:
                labeled = labeled.where(
                    exists().where(ItemPath.item_id == Annotation.item_id, ItemPath.pool_id == pool_id)
                )
            return {
                "items": int(total),
                "paths": int(n_paths),
                "duplicate_paths": int(n_paths - total),
                "failed": int(failed),
                "scored": int(scored),
                "invalid": int(invalid),
                "unscored": int(total - failed - scored - invalid),
                "selected": int(selected),
                "queued": tasks("queued"),
                "skipped": tasks("skipped"),
                "labeled": int(conn.execute(labeled).scalar_one()),
            }

    def states(self, pool_id: int | None = None) -> dict[str, NDArray[np.int64]]:
        """Sorted item ids (in the pool, if given) that were ever ``selected``, whose task is ``queued`` or
        ``skipped`` in a Label Studio project, and that are ``labeled`` (a non-cancelled annotation). An item can be
        in several: a labeled item was selected and queued first."""

        def ids(stmt: Any, column: Any) -> Any:
            if pool_id is not None:
                stmt = stmt.where(exists().where(ItemPath.item_id == column, ItemPath.pool_id == pool_id))
            return stmt

        queries = {
            "selected": ids(select(func.distinct(SelectionItem.item_id)), SelectionItem.item_id),
            "queued": ids(select(func.distinct(LSTask.item_id)).where(LSTask.status == "queued"), LSTask.item_id),
            "skipped": ids(select(func.distinct(LSTask.item_id)).where(LSTask.status == "skipped"), LSTask.item_id),
            "labeled": ids(
                select(func.distinct(Annotation.item_id)).where(Annotation.was_cancelled.is_(False)),
                Annotation.item_id,
            ),
        }
        with self._db.tx(write=False) as conn:
            return {
                name: np.array(sorted(int(r[0]) for r in conn.execute(stmt)), dtype=np.int64)
                for name, stmt in queries.items()
            }

    def locations(self, item_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """item id → (pool root, stored path) of its first known path, for reading the file."""
        out: dict[int, tuple[str, str]] = {}
        ids = [int(i) for i in item_ids]
        first = select(ItemPath.item_id, func.min(ItemPath.id).label("pid")).group_by(ItemPath.item_id)
        with self._db.tx(write=False) as conn:
            for start in range(0, len(ids), BATCH):
                sub = first.where(ItemPath.item_id.in_(ids[start : start + BATCH])).subquery()
                rows = conn.execute(
                    select(ItemPath.item_id, Pool.root, ItemPath.path)
                    .join(sub, sub.c.pid == ItemPath.id)
                    .join(Pool, Pool.id == ItemPath.pool_id)
                )
                out.update({int(i): (str(root), str(path)) for i, root, path in rows})
        return out
