"""Pools and the paths seen in them: scan registration, the one place a rescan's changes land."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, select, update

from store.db import BATCH, Database
from store.records import PENDING_PREFIX, KnownPath, ScannedFile
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
        self._range_compiled: tuple[str, tuple[str, ...] | None] | None = None

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

    def known_stats(self, pool_id: int) -> list[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every path of the pool as plain tuples, for a local rescan to compare its
        ``stat`` results with in C-level set operations (no per-row objects: an idle scan of 100k files reads
        every row)."""
        with self._db.tx(write=False) as conn:
            stmt = select(ItemPath.path, ItemPath.size, ItemPath.mtime_ns).where(ItemPath.pool_id == pool_id)
            result = conn.execute(stmt)
            try:  # the driver's own rows (plain tuples; these columns need no type processing)
                rows: list[tuple[str, int, int]] = list(result.cursor.fetchall())  # sqlite3, psycopg: tuples
                return rows
            finally:
                result.close()

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

    def _bytewise(self, column: Any) -> Any:
        """``column`` compared in UTF-8 byte order — the order S3 lists keys in, and Python's ``str`` order.
        SQLite's default collation already is; Postgres' database collation need not be."""
        return column.collate("C") if self._db.dialect == "postgresql" else column

    def known_in_range(self, pool_id: int, after: str | None, upto: str) -> list[tuple[str, int, int, str | None]]:
        """(path, path row id, size, etag) of the pool's paths in ``(after, upto]`` (byte order), one query: what
        an object-store listing page must be compared with. An unchanged rerun of a large prefix asks once per
        listing page and writes nothing, so the rows come straight from the driver's cursor as plain tuples (no
        ``Row`` per path: a third of this call's time on 100,000 paths)."""
        with self._db.tx(write=False) as conn:
            sql, order = self._range_sql(conn)
            values = {"pool_id": pool_id, "after": after or "", "upto": upto}  # every stored path is > ""
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, tuple(values[n] for n in order) if order else values)
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def _range_sql(self, conn: Connection) -> tuple[str, tuple[str, ...] | None]:
        """``known_in_range``'s statement compiled once for the dialect: its text and, for positional driver
        parameters, their order."""
        if self._range_compiled is None:
            path = self._bytewise(ItemPath.path)
            stmt = select(ItemPath.path, ItemPath.id, ItemPath.size, ItemPath.etag).where(
                ItemPath.pool_id == bindparam("pool_id"), path > bindparam("after"), path <= bindparam("upto")
            )
            compiled = stmt.compile(dialect=conn.dialect)
            order = tuple(compiled.positiontup) if compiled.positiontup else None
            self._range_compiled = (str(compiled), order)
        return self._range_compiled

    def split_points(self, pool_id: int, parts: int, min_part: int) -> list[str]:
        """Up to ``parts - 1`` of the pool's stored paths, ascending in byte order, that cut its paths into ranges
        of about equal size and at least ``min_part`` paths each (none for a small pool): where an object-store
        rescan can split its listing into ranges listed concurrently. Two queries; only the points leave the
        database."""
        path = self._bytewise(ItemPath.path)
        with self._db.tx(write=False) as conn:
            n = int(
                conn.execute(select(func.count()).select_from(ItemPath).where(ItemPath.pool_id == pool_id)).scalar_one()
            )
            parts = min(parts, n // max(1, min_part))
            if parts < 2:
                return []
            step = -(-n // parts)
            numbered = (
                select(path.label("path"), func.row_number().over(order_by=path).label("rn"))
                .where(ItemPath.pool_id == pool_id)
                .subquery()
            )
            rows = conn.execute(
                select(numbered.c.path).where(numbered.c.rn % step == 0, numbered.c.rn < n).order_by(numbered.c.rn)
            )
            return [str(p) for p in rows.scalars()]

    def ids_after(self, pool_id: int, after: str | None) -> list[int]:
        """Path row ids of the pool's paths after ``after`` in byte order (all of them for None)."""
        stmt = select(ItemPath.id).where(ItemPath.pool_id == pool_id)
        if after is not None:
            stmt = stmt.where(self._bytewise(ItemPath.path) > after)
        with self._db.tx(write=False) as conn:
            return [int(i) for i in conn.execute(stmt).scalars()]

    def register_pending(
        self, pool_id: int, listed: Sequence[tuple[str, int, int, str | None]], mark: int | None = None
    ) -> int:
        """Register listed objects that are new or changed (path, size, mtime_ns, etag) without reading them: each
        path gets an item of status ``pending`` whose content id is resolved when scoring reads it. Returns how
        many were registered. Pending items the paths pointed to before (an object changed again before it was
        read) are removed."""
        if not listed:
            return 0
        now = utcnow()
        with self._db.tx() as conn:
            for start in range(0, len(listed), BATCH):
                chunk = listed[start : start + BATCH]
                rows = [
                    {
                        "content_id": pending_id(pool_id, path, size, etag),
                        "size": size,
                        "status": "pending",
                        "width": None,
                        "height": None,
                        "created_at": now,
                    }
                    for path, size, _, etag in chunk
                ]
                conn.execute(self._db.insert(Item).on_conflict_do_nothing(index_elements=["content_id"]), rows)
                cids = [str(r["content_id"]) for r in rows]
                ids = dict(conn.execute(select(Item.content_id, Item.id).where(Item.content_id.in_(cids))).all())
                previous = [
                    int(i)
                    for i in conn.execute(
                        select(ItemPath.item_id).where(
                            ItemPath.pool_id == pool_id, ItemPath.path.in_([p for p, *_ in chunk])
                        )
                    ).scalars()
                ]
                stmt = self._db.insert(ItemPath)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["pool_id", "path"],
                    set_={c: getattr(stmt.excluded, c) for c in ("item_id", "size", "mtime_ns", "etag", "scan_mark")},
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "pool_id": pool_id,
                            "path": path,
                            "item_id": ids[cid],
                            "size": size,
                            "mtime_ns": mtime_ns,
                            "etag": etag,
                            "scan_mark": mark,
                        }
                        for (path, size, mtime_ns, etag), cid in zip(chunk, cids, strict=True)
                    ],
                )
                _drop_orphan_pending(conn, previous)
            conn.execute(update(Pool).where(Pool.id == pool_id).values(scanned_at=now))
        return len(listed)

    def forget(self, pool_id: int, path_ids: Sequence[int], mark: int | None = None) -> int:
        """After a complete listing: delete the path rows ``path_ids`` (objects it no longer shows) and, with
        ``mark``, those it did not mark. Pending items left without a path go too. Returns how many paths."""
        removed = 0
        with self._db.tx() as conn:
            items: list[int] = []
            for start in range(0, len(path_ids), BATCH):
                ids = list(path_ids[start : start + BATCH])
                items += [int(i) for i in conn.execute(select(ItemPath.item_id).where(ItemPath.id.in_(ids))).scalars()]
                removed += int(conn.execute(delete(ItemPath).where(ItemPath.id.in_(ids))).rowcount or 0)
            if mark is not None:
                unmarked = (ItemPath.pool_id == pool_id) & (
                    (ItemPath.scan_mark.is_(None)) | (ItemPath.scan_mark != mark)
                )
                items += [int(i) for i in conn.execute(select(ItemPath.item_id).where(unmarked)).scalars()]
                removed += int(conn.execute(delete(ItemPath).where(unmarked)).rowcount or 0)
            _drop_orphan_pending(conn, items)
            conn.execute(update(Pool).where(Pool.id == pool_id).values(scanned_at=utcnow()))
        return removed

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

    def pending_count(self, pool_id: int) -> int:
        """Paths of the pool whose object was listed but not read yet."""
        with self._db.tx(write=False) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(ItemPath)
                    .join(Item, Item.id == ItemPath.item_id)
                    .where(ItemPath.pool_id == pool_id, Item.status == "pending")
                ).scalar_one()
            )

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


def pending_id(pool_id: int, path: str, size: int, etag: str | None) -> str:
    """The placeholder content id of a listed, unread object version (deterministic: a rescan that finds the same
    version maps it to the same pending item)."""
    digest = hashlib.sha256(f"{pool_id}\0{path}\0{size}\0{etag}".encode()).hexdigest()
    return f"{PENDING_PREFIX}{digest[: 32 - len(PENDING_PREFIX)]}"


def _drop_orphan_pending(conn: Connection, item_ids: Iterable[int]) -> None:
    """Delete those of ``item_ids`` that are pending and no path points to any more."""
    ids = sorted(set(item_ids))
    for start in range(0, len(ids), BATCH):
        conn.execute(
            delete(Item).where(
                Item.id.in_(ids[start : start + BATCH]),
                Item.status == "pending",
                ~exists().where(ItemPath.item_id == Item.id),
            )
        )


def resolve_pending(conn: Connection, resolved: Mapping[int, str]) -> dict[int, int]:
    """Give pending items the content ids their bytes hashed to (pending item id → content id), inside the
    transaction that stores their scores. A content the database already knows is a duplicate: the pending item's
    paths move to the known item and the pending item is deleted. Returns pending item id → the item id that
    the scores belong to (items no longer pending — already resolved — map to themselves)."""
    if not resolved:
        return {}
    out: dict[int, int] = {}
    pending_ids = list(resolved)
    still = set(
        int(i)
        for i in conn.execute(select(Item.id).where(Item.id.in_(pending_ids), Item.status == "pending")).scalars()
    )
    cids = sorted(set(resolved.values()))
    known = {str(c): int(i) for c, i in conn.execute(select(Item.content_id, Item.id).where(Item.content_id.in_(cids)))}
    renames, merges = [], []
    for pending, cid in resolved.items():
        if pending not in still:
            out[pending] = pending
            continue
        target = known.get(cid)
        if target is None:
            renames.append({"b_id": pending, "b_cid": cid})
            known[cid] = out[pending] = pending
        else:
            merges.append({"b_from": pending, "b_to": target})
            out[pending] = target
    if renames:
        conn.execute(
            update(Item).where(Item.id == bindparam("b_id")).values(content_id=bindparam("b_cid"), status="new"),
            renames,
        )
    if merges:
        conn.execute(
            update(ItemPath).where(ItemPath.item_id == bindparam("b_from")).values(item_id=bindparam("b_to")), merges
        )
        conn.execute(delete(Item).where(Item.id.in_([m["b_from"] for m in merges])))
    return out
