"""One curate run at a time per database: cron may start ``curate loop`` while the last one still runs.

- SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the database file; the holder's pid, host, command and
  start time are written into it.
- Postgres: a session-level advisory lock held on a dedicated connection; the holder is recorded in
  ``lock_holders``.

Both are released by the operating system or the server when the process dies, ``kill -9`` included, so a crashed
run never leaves a stale lock behind. A crashed run does leave its scoring run marked ``running``: the next holder of
the lock, and only it, marks such runs ``interrupted`` (a process without the lock cannot tell a dead run from a
live one, and read-only commands never write).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sqlalchemy import Connection, delete, select, text

from store.db import Database, advisory_key, redact_argv
from store.errors import LockHeldError
from store.schema import LockHolder, utcnow
from store.store import Store
from store.urls import sqlite_file

LOCK_NAME = "curate-run"

# Descriptors that hold a run lock in this process: the lock file (SQLite) or the lock's connection (Postgres).
_HELD: set[int] = set()
_FORK_HOOK = False


def _keep_from_children(fd: int) -> None:
    """A forked child (a DataLoader worker) shares the lock's file description or socket: after ``kill -9`` of
    the run the lock would live on until the orphaned workers noticed (seconds). Children drop them at fork."""
    global _FORK_HOOK
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_drop_in_child)
        _FORK_HOOK = True
    _HELD.add(fd)


def _drop_in_child() -> None:
    # Point the child's copies at /dev/null rather than close them: the number stays owned by the Python object
    # that wraps it, so nothing else can be opened under it and closed by mistake.
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _HELD:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD.clear()


def _describe(pid: Any, host: Any, command: Any, started: Any) -> str:
    return f"another run holds the lock (pid {pid} on {host}, started {started}: {command})"


class RunLock:
    """Context manager; raises ``LockHeldError`` at once if another run holds the lock. Once held, scoring runs
    left ``running`` are closed as ``interrupted``: no live process can own them any more."""

    def __init__(self, store: Store, command: str | None = None) -> None:
        self.store = store
        self.command = command or " ".join(["curate", *redact_argv(sys.argv[1:])])[:500]
        self._file: IO[str] | None = None
        self._conn: Any = None
        self._key = 0

    def __enter__(self) -> RunLock:
        if self.store.dialect == "sqlite":
            self._lock_file()
        elif self.store.dialect == "postgresql":
            self._lock_advisory()
        try:
            self.store.runs.close_stale()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            _HELD.discard(self._file.fileno())
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            _HELD.discard(_socket_of(self._conn))
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    # -- SQLite ------------------------------------------------------------------------------------------------------
    def lock_path(self) -> Path | None:
        database = sqlite_file(self.store.url)
        if database is None:
            return None
        return database.expanduser().resolve().with_name(database.name + ".lock")

    def _lock_file(self) -> None:
        import fcntl

        path = self.lock_path()
        if path is None:
            return
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                info = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                info = {}
            handle.close()
            raise LockHeldError(
                _describe(
                    info.get("pid", "?"), info.get("host", "?"), info.get("command", "?"), info.get("started", "?")
                )
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": self.command,
                    "started": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
        handle.flush()
        self._file = handle
        _keep_from_children(handle.fileno())

    # -- Postgres ----------------------------------------------------------------------------------------------------
    def _lock_advisory(self) -> None:
        conn = self.store.engine.connect()
        self._key = advisory_key(conn, "run")
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
        conn.commit()
        if not got:
            conn.close()
            holder = lock_holder(self.store.db, LOCK_NAME)
            if holder is None:
                raise LockHeldError("another run holds the lock (holder unknown)")
            pid, host, command, started = holder
            raise LockHeldError(_describe(pid, host, command, started.isoformat(timespec="seconds")))
        with self.store.db.tx() as tx:
            _record_holder(self.store.db, tx, LOCK_NAME, self.command)
        self._conn = conn
        _keep_from_children(_socket_of(conn))


def _socket_of(conn: Connection) -> int:
    """The file descriptor of the server socket under a SQLAlchemy connection (psycopg)."""
    return int(conn.connection.dbapi_connection.fileno())  # type: ignore[union-attr]


def _record_holder(db: Database, conn: Connection, name: str, command: str) -> None:
    conn.execute(delete(LockHolder).where(LockHolder.name == name))
    conn.execute(
        db.insert(LockHolder).values(
            name=name, pid=os.getpid(), host=socket.gethostname(), command=command, started_at=utcnow()
        )
    )


def lock_holder(db: Database, name: str = LOCK_NAME) -> tuple[int, str, str, datetime] | None:
    """(pid, host, command, started) of the last process that took the Postgres run lock ``name``."""
    with db.tx(write=False) as conn:
        row = conn.execute(
            select(LockHolder.pid, LockHolder.host, LockHolder.command, LockHolder.started_at).where(
                LockHolder.name == name
            )
        ).one_or_none()
        return None if row is None else (int(row[0]), row[1], row[2], row[3])
