"""Selections: what was chosen, in which order, from which pool, and whether it is meant for Label Studio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update

from store.db import BATCH, Database
from store.records import SelectedItem
from store.schema import Item, ItemPath, ModelVersion, Selection, SelectionItem, utcnow

PURPOSES = ("active", "test")
TEST = "test"


class Selections:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
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
        purpose: str = "active",
    ) -> int:
        """Record a selection (meant for the Label Studio project ``push_ls_project_id``, if given) atomically: a
        crash leaves no half-recorded selection, nor one that is recorded but not marked for its push.
        ``purpose`` ``test``: the items are the test set (evaluation only)."""
        if purpose not in PURPOSES:
            raise ValueError(f"unknown selection purpose {purpose!r}; expected one of: {', '.join(PURPOSES)}")
        with self._db.tx() as conn:
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
                        purpose=purpose,
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

    def items(self, selection_id: int) -> list[SelectedItem]:
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
        with self._db.tx(write=False) as conn:
            return [SelectedItem(int(r[0]), r[1], r[2] or "", int(r[3]), float(r[4]), r[5]) for r in conn.execute(stmt)]

    def recent(self, limit: int = 5) -> list[dict[str, Any]]:
        stmt = (
            select(Selection.__table__, ModelVersion.version.label("model_version"))
            .join(ModelVersion, ModelVersion.id == Selection.model_version_id)
            .order_by(Selection.id.desc())
            .limit(limit)
        )
        with self._db.tx(write=False) as conn:
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

    def exists(self, selection_id: int) -> bool:
        with self._db.tx(write=False) as conn:
            return conn.execute(select(Selection.id).where(Selection.id == selection_id)).first() is not None

    def mark_for_push(self, selection_id: int, ls_project_id: int) -> None:
        with self._db.tx() as conn:
            conn.execute(
                update(Selection)
                .where(Selection.id == selection_id)
                .values(push=True, push_ls_project_id=ls_project_id)
            )

    def history(self, pool_id: int | None = None) -> list[dict[str, Any]]:
        """Every selection (from the pool, if given), oldest first."""
        stmt = (
            select(Selection.__table__, ModelVersion.version.label("model_version"))
            .join(ModelVersion, ModelVersion.id == Selection.model_version_id)
            .order_by(Selection.id)
        )
        if pool_id is not None:
            stmt = stmt.where(Selection.pool_id == pool_id)
        with self._db.tx(write=False) as conn:
            return [
                {
                    "id": s.id,
                    "model_version": s.model_version,
                    "strategy": s.strategy,
                    "selected": s.n_selected,
                    "created_at": s.created_at,
                }
                for s in conn.execute(stmt)
            ]

    def latest_id(self, pool_id: int | None = None) -> int | None:
        stmt = select(func.max(Selection.id))
        if pool_id is not None:
            stmt = stmt.where(Selection.pool_id == pool_id)
        with self._db.tx(write=False) as conn:
            value = conn.execute(stmt).scalar_one_or_none()
            return None if value is None else int(value)

    def test_items(self) -> dict[int, int]:
        """item id → its place in the test set's draw order (0 first): the items of every ``test`` selection, by
        selection and rank. An item is in the test set for good: its labels are evaluation-only."""
        stmt = (
            select(SelectionItem.item_id)
            .join(Selection, Selection.id == SelectionItem.selection_id)
            .where(Selection.purpose == TEST)
            .order_by(SelectionItem.selection_id, SelectionItem.rank)
        )
        out: dict[int, int] = {}
        with self._db.tx(write=False) as conn:
            for (item_id,) in conn.execute(stmt):
                out.setdefault(int(item_id), len(out))
        return out

    def test_selections(self) -> list[dict[str, Any]]:
        """The test set's draws, oldest first (id, size, options such as the seed, when)."""
        stmt = select(Selection.__table__).where(Selection.purpose == TEST).order_by(Selection.id)
        with self._db.tx(write=False) as conn:
            return [
                {
                    "id": s.id,
                    "selected": s.n_selected,
                    "options": s.options,
                    "created_at": s.created_at,
                    "push": bool(s.push),
                }
                for s in conn.execute(stmt)
            ]
