"""Pools and the paths seen in them: scan registration, the one place a rescan's changes land."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update

from store.db import BATCH, Database
from store.records import KnownPath, ScannedFile
from store.schema import Item, ItemPath, Pool, utcnow


def pool_items(pool_id: int) -> Any:
    """Subquery: one row per item present in the pool, with its first path."""
    return (
        select(ItemPath.item_id.label("item_id"), func.min(ItemPath.path).label("path"))
        .where(ItemPath.pool_id == pool_id)
        .group_by(ItemPath.item_id)
        .subquery()
    )


class Pools:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get_or_create(self, location: str, kind: str, root: str) -> int:
        with self._db.tx() as conn:
            stmt = self._db.insert(Pool).values(location=location, kind=kind, root=root, created_at=utcnow())
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["location"]))
            pool_id = conn.execute(select(Pool.id).where(Pool.location == location)).scalar_one()
            conn.execute(update(Pool).where(Pool.id == pool_id).values(kind=kind, root=root))
            return int(pool_id)

    def find(self, location: str) -> int | None:
        with self._db.tx(write=False) as conn:
            value = conn.execute(select(Pool.id).where(Pool.location == location)).scalar_one_or_none()
            return None if value is None else int(value)

    def all(self) -> list[tuple[int, str]]:
        """(id, location) of every pool, oldest first."""
        with self._db.tx(write=False) as conn:
            return [(int(i), str(loc)) for i, loc in conn.execute(select(Pool.id, Pool.location).order_by(Pool.id))]

    def known_paths(self, pool_id: int) -> dict[str, KnownPath]:
        with self._db.tx(write=False) as conn:
            rows = conn.execute(
                select(ItemPath.path, ItemPath.item_id, ItemPath.size, ItemPath.mtime_ns, ItemPath.etag).where(
                    ItemPath.pool_id == pool_id
                )
            ).all()  # fetched in one call: an idle scan of a large pool reads every row
            return {path: KnownPath(item_id, size, mtime_ns, etag) for path, item_id, size, mtime_ns, etag in rows}

    def known_among(self, pool_id: int, paths: Sequence[str]) -> dict[str, KnownPath]:
        """What the last scans recorded for ``paths`` (one listing page of an object-store pool at a time, so that
        a prefix with a million objects is never held in memory)."""
        out: dict[str, KnownPath] = {}
        with self._db.tx(write=False) as conn:
            for start in range(0, len(paths), BATCH):
                rows = conn.execute(
                    select(ItemPath.path, ItemPath.item_id, ItemPath.size, ItemPath.mtime_ns, ItemPath.etag).where(
                        ItemPath.pool_id == pool_id, ItemPath.path.in_(list(paths[start : start + BATCH]))
                    )
                )
                out.update({r.path: KnownPath(r.item_id, r.size, r.mtime_ns, r.etag) for r in rows})
        return out

    def mark_seen(self, pool_id: int, paths: Sequence[str], mark: int) -> None:
        """Record that the listing of scan ``mark`` still holds ``paths`` (unchanged, or unreadable for now)."""
        with self._db.tx() as conn:
            for start in range(0, len(paths), BATCH):
                conn.execute(
                    update(ItemPath)
                    .where(ItemPath.pool_id == pool_id, ItemPath.path.in_(list(paths[start : start + BATCH])))
                    .values(scan_mark=mark)
                )

    def sweep(self, pool_id: int, mark: int) -> int:
        """After a complete listing: forget the paths it did not mark (deleted objects). Returns how many."""
        with self._db.tx() as conn:
            result = conn.execute(
                delete(ItemPath).where(
                    ItemPath.pool_id == pool_id, (ItemPath.scan_mark.is_(None)) | (ItemPath.scan_mark != mark)
                )
            )
            conn.execute(update(Pool).where(Pool.id == pool_id).values(scanned_at=utcnow()))
            return int(result.rowcount or 0)

    def duplicate_paths(self, pool_id: int) -> int:
        """Paths of the pool that hold the same content as another of its paths."""
        with self._db.tx(write=False) as conn:
            return self._duplicates(conn, pool_id)

    @staticmethod
    def _duplicates(conn: Any, pool_id: int) -> int:
        n_paths = conn.execute(
            select(func.count()).select_from(ItemPath).where(ItemPath.pool_id == pool_id)
        ).scalar_one()
        n_items = conn.execute(
            select(func.count(func.distinct(ItemPath.item_id))).where(ItemPath.pool_id == pool_id)
        ).scalar_one()
        return int(n_paths - n_items)

    def apply_scan(
        self, pool_id: int, changed: Sequence[ScannedFile], gone: Iterable[str], mark: int | None = None
    ) -> tuple[int, int]:
        """Register new/changed files and forget vanished paths. Returns (new items, paths that are duplicates).
        ``mark``: the object-store scan that listed ``changed`` (see ``mark_seen``)."""
        new_items = 0
        with self._db.tx() as conn:
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
                    self._db.insert(Item).on_conflict_do_nothing(index_elements=["content_id"]),
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
                stmt = self._db.insert(ItemPath)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["pool_id", "path"],
                    set_={
                        "item_id": stmt.excluded.item_id,
                        "size": stmt.excluded.size,
                        "mtime_ns": stmt.excluded.mtime_ns,
                        "etag": stmt.excluded.etag,
                        "scan_mark": stmt.excluded.scan_mark,
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
                            "etag": f.etag,
                            "scan_mark": mark,
                        }
                        for f in chunk
                    ],
                )
            conn.execute(update(Pool).where(Pool.id == pool_id).values(scanned_at=utcnow()))
            duplicates = self._duplicates(conn, pool_id) if mark is None else 0
        return new_items, duplicates
