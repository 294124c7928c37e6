"""Engine creation, automatic migrations and the one transaction helper: the only module that knows dialect
quirks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from store.errors import DatabaseError, DatabaseURLError, SchemaTooNewError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
BATCH = 2000  # rows per executemany; well under SQLite's and Postgres' parameter limits


def redacted(url: str) -> str:
    """The URL with its password masked, for messages. A password holding an unencoded ``@`` is masked up to the
    last ``@`` (a URL parser would take what follows the first one for the host, and show half the password)."""
    if _ambiguous_credentials(url):
        scheme, _, rest = url.partition("://")
        user = rest[: rest.rfind("@")].partition(":")[0]
        return f"{scheme}://{user}:***{rest[rest.rfind('@') :]}"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database url>"


def _ambiguous_credentials(url: str) -> bool:
    """More than one ``@`` before the query: a password (or user name) with an unencoded ``@``."""
    scheme, sep, rest = url.partition("://")
    return bool(sep) and not scheme.startswith("sqlite") and rest.split("?", 1)[0].count("@") > 1


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to store or print: passwords inside database URLs are masked.

    Why: the run lock records the holder's command so a blocked cron run can say who holds it, and ``--db`` may
    carry a password.
    """
    out: list[str] = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if "://" in value and "@" in value:
            value = redacted(value)
        out.append(f"{flag}{eq}{value}" if eq else value)
    return out


def advisory_key(conn: Connection, purpose: str) -> int:
    """A signed 64-bit Postgres advisory-lock key for ``purpose`` in this database and schema: advisory locks are
    per Postgres database, and several curate databases may share one in different schemas."""
    where = conn.execute(text("SELECT current_database() || '/' || current_schema()")).scalar()
    return int.from_bytes(hashlib.sha256(f"{purpose}:{where}".encode()).digest()[:8], "big", signed=True)


def first_line(exc: BaseException) -> str:
    """A driver error reduced to its first meaningful line (no SQL, no parameters)."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def create_store_engine(url: str) -> Engine:
    """An engine tuned for curate's access pattern: few writers, bulk chunks, concurrent readers."""
    if _ambiguous_credentials(url):
        raise DatabaseURLError(
            f"invalid database URL {redacted(url)}: the password or user name contains '@'; percent-encode it "
            "as %40 (other special characters too: ':' as %3A, '/' as %2F)"
        )
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port raises only when read
    except (ArgumentError, ValueError):
        shown = repr(url) if "@" not in url else "<database url with credentials>"
        raise DatabaseURLError(f"invalid database URL {shown}: expected e.g. sqlite:///curate.db") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(url)
        else:
            connect_args: dict[str, Any] = {}
            if parsed.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = 10
                connect_args["application_name"] = "curate"
            engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise DatabaseURLError(f"unsupported database URL {redacted(url)}: {first_line(exc)}") from None
    return engine


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise DatabaseError(f"cannot open database {url}: directory {parent} does not exist")
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (pysqlite's implicit BEGIN breaks DDL
        # atomicity and savepoints).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can fail with
        # SQLITE_BUSY without waiting, while IMMEDIATE waits up to busy_timeout. Read-only transactions stay
        # deferred: in WAL mode they read a snapshot without blocking on, or blocking, the writer.
        read_only = connection.get_execution_options().get("curate_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The schema revision, read in a read-only transaction: opening an up-to-date database never takes SQLite's
    write lock, so ``curate status`` next to a running loop neither waits for it nor blocks it."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        conn = conn.execution_options(curate_read_only=True)
        return MigrationContext.configure(conn).get_current_revision()


_REVISION_LINE = re.compile(r"""^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:['"]([^'"]+)['"]|None)""", re.MULTILINE)


def known_revisions() -> list[str]:
    """Every schema revision this curate ships, oldest first (the migration files are named by their number)."""
    found = []
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        match = {m.group(1): m.group(2) for m in _REVISION_LINE.finditer(path.read_text(encoding="utf-8"))}
        if match.get("revision"):
            found.append(match["revision"])
    return found


def _curate_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curate")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _refuse_unknown_revision(engine: Engine, stored: str | None) -> None:
    """A revision this curate does not ship means a newer curate migrated the database: say so (exit 4) instead
    of Alembic's "Can't locate revision", and never touch the schema."""
    known = known_revisions()
    if stored is None or stored in known:
        return
    url = engine.url.render_as_string(hide_password=True)
    newest = known[-1] if known else "none"
    raise SchemaTooNewError(
        f"database {url} has schema revision {stored}, newer than this curate ({_curate_version()}) knows (its "
        f"newest is {newest}): it was migrated by a newer curate. Upgrade curate to a release whose "
        f"store/migrations include revision {stored} (pip install -U curate); databases are never downgraded"
    )


def head_from_files() -> str | None:
    """The head revision read straight from the (frozen, linear) migration files, or None if they do not form one
    chain. Why: importing Alembic costs ~0.5 s, and every open but the first finds the database already at head,
    which this and one SELECT confirm (a test checks it agrees with Alembic's own answer)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found = {m.group(1): m.group(2) for m in _REVISION_LINE.finditer(path.read_text(encoding="utf-8"))}
        if not found.get("revision"):
            return None
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return next(iter(heads)) if len(heads) == 1 and parents <= revisions else None


def _stored_revision(engine: Engine) -> str | None:
    """The revision recorded in ``alembic_version`` (read-only; None for a new database)."""
    with engine.connect() as conn:
        conn = conn.execution_options(curate_read_only=True)
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return str(rows[0]) if len(rows) == 1 else None


def migrate(engine: Engine) -> bool:
    """Bring the schema to head; returns True if migrations ran. Safe when several processes start at once."""
    fast_head = head_from_files()
    stored = _stored_revision(engine)
    if fast_head is not None and stored == fast_head:
        return False  # the usual case, without importing Alembic
    _refuse_unknown_revision(engine, stored)
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    if current_revision(engine) == head:
        return False
    cfg = alembic_config()
    with engine.connect() as conn:
        key = 0
        if conn.dialect.name == "postgresql":
            # Session-level lock: concurrent first runs wait here instead of racing to create tables.
            key = advisory_key(conn, "migrate")
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
        try:
            if MigrationContext.configure(conn).get_current_revision() != head:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    return True


def open_engine(url: str) -> Engine:
    """Create the engine, check the connection and migrate; every failure becomes a ``DatabaseError``."""
    engine = create_store_engine(url)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot use database {redacted(url)}: {first_line(exc)}") from exc
    return engine


class Database:
    """One database: its engine and the one transaction helper every repository shares."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name

    @property
    def display_url(self) -> str:
        return redacted(self.url)

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[Connection]:
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

    def insert(self, table: Any) -> Any:
        """An INSERT with the dialect's ``on_conflict_do_nothing``/``on_conflict_do_update``."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql  # imported for Postgres databases only (~0.06 s)

            return postgresql.insert(table)
        return sqlite.insert(table)
