"""Database URLs without a connection: where a SQLite database file lives, relative paths made absolute. Light to
import (no engine, no Alembic), so configuration code can use it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url


def sqlite_file(url: str) -> Path | None:
    """The database file of a file-backed SQLite URL (as written: not resolved); None for any other URL, an
    in-memory database, or an unparseable URL (the store reports those, without secrets, when it opens them)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def resolve_sqlite_url(url: str, base: Path) -> str:
    """``url`` with a relative SQLite database path made absolute against ``base``; other URLs unchanged."""
    database = sqlite_file(url)
    if database is None or database.expanduser().is_absolute() or str(database).startswith("file:"):
        return url
    return make_url(url).set(database=str((base / database).resolve())).render_as_string(hide_password=False)
