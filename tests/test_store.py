"""Store tests, each run on SQLite and on the real Postgres server."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect

from store import Store
from store.db import create_store_engine, current_revision, head_from_files, head_revision, redact_argv
from store.errors import DatabaseError, DatabaseURLError
from store.records import ScannedFile, ScoredChunk, ScoredItem
from store.schema import Base, Embedding


def _register(store: Store, n: int, pool: str = "/pool") -> tuple[int, list[int]]:
    pool_id = store.pools.get_or_create(pool, "directory", pool)
    files = [ScannedFile(f"img_{i}.jpg", 100 + i, 1_000 + i, f"{i:032x}") for i in range(n)]
    store.pools.apply_scan(pool_id, files, [])
    known = store.pools.known_paths(pool_id)
    return pool_id, [known[f"img_{i}.jpg"].item_id for i in range(n)]


def _mv(store: Store, version: str = "m-1", task: str = "classify", k: int = 3) -> int:
    return store.models.register(
        version=version,
        source="m.pt",
        format="ultralytics",
        task=task,
        class_names=[f"c{i}" for i in range(k)],
        imgsz=64,
        embedding_dim=4,
    ).id


def _chunk(item_ids: list[int], rng: np.random.Generator, k: int = 3) -> ScoredChunk:
    chunk = ScoredChunk()
    for i in item_ids:
        e = rng.normal(size=4).astype(np.float32)
        chunk.scored.append(
            ScoredItem(
                item_id=i,
                width=64,
                height=48,
                probs=rng.dirichlet(np.ones(k)).astype(np.float32),
                embedding=e / np.linalg.norm(e),
            )
        )
    return chunk


@pytest.mark.heavy
def test_migrations_run_on_first_use_and_match_the_models(db_url: str) -> None:
    store = Store.open(db_url)
    assert current_revision(store.engine) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"migrations and store/schema.py disagree: {diff}"
    tables = set(inspect(store.engine).get_table_names())
    assert {"items", "item_paths", "predictions", "embeddings", "selections", "selection_items"} <= tables
    store.close()
    Store.open(db_url).close()  # second open: no migration, no error


@pytest.mark.heavy
def test_an_up_to_date_database_opens_without_alembic(db_url: str) -> None:
    """Alembic costs ~0.5 s to import: every open after the first only reads the recorded revision."""
    assert head_from_files() == head_revision()
    Store.open(db_url).close()  # first use: migrates
    code = (
        "import sys; from store import Store; Store.open(sys.argv[1]).close(); "
        "assert not [m for m in sys.modules if m.startswith('alembic')], 'alembic was imported'"
    )
    subprocess.run([sys.executable, "-c", code, db_url], check=True, cwd=Path(__file__).resolve().parents[1])


def test_scan_registration_and_duplicates(db_url: str) -> None:
    store = Store.open(db_url)
    pool_id = store.pools.get_or_create("/pool", "directory", "/pool")
    files = [
        ScannedFile("a.jpg", 1, 1, "aa"),
        ScannedFile("b.jpg", 1, 1, "bb"),
        ScannedFile("c.jpg", 1, 1, "aa"),
    ]
    new, dups = store.pools.apply_scan(pool_id, files, [])
    assert (new, dups) == (2, 1)
    new, dups = store.pools.apply_scan(pool_id, [], ["c.jpg"])
    assert (new, dups) == (0, 0)
    assert set(store.pools.known_paths(pool_id)) == {"a.jpg", "b.jpg"}
    assert store.pools.get_or_create("/pool", "directory", "/pool") == pool_id
    store.close()


def test_chunks_round_trip_and_resume(db_url: str) -> None:
    rng = np.random.default_rng(0)
    store = Store.open(db_url)
    pool_id, ids = _register(store, 10)
    mv = _mv(store)
    assert len(store.items.to_score(pool_id, mv)) == 10
    run = store.runs.start(mv, pool_id, 10, "cpu", 4)
    chunk = _chunk(ids[:4], rng)
    chunk.failures.append((ids[4], "corrupt image: truncated"))
    store.runs.write_chunk(run, mv, chunk)
    # a "crash" here: the next run only sees the 5 items not yet done
    todo = store.items.to_score(pool_id, mv)
    assert [t.item_id for t in todo] == ids[5:]
    assert len(store.items.to_score(pool_id, mv, rescore=True)) == 9  # failed items never come back
    store.runs.write_chunk(run, mv, _chunk(ids[5:], rng))
    store.runs.finish(run, "completed", 12.5)
    assert store.items.to_score(pool_id, mv) == []

    scores = store.scores.candidate_classification(pool_id, mv)
    assert list(scores.item_ids) == sorted(ids[:4] + ids[5:])
    assert scores.probs.shape == (9, 3) and np.allclose(scores.probs.sum(axis=1), 1, atol=1e-5)
    emb, found = store.scores.embeddings(mv, scores.item_ids[::-1].copy(), 4)
    assert found.all() and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-2)
    counts = store.items.counts(pool_id, mv)
    assert counts["items"] == 10 and counts["failed"] == 1 and counts["scored"] == 9 and counts["unscored"] == 0
    assert store.items.failures(pool_id) == [("img_4.jpg", "corrupt image: truncated")]
    runs = store.runs.recent()
    assert runs[0]["scored"] == 9 and runs[0]["failed"] == 1 and runs[0]["status"] == "completed"

    # rescoring the same item replaces its row instead of duplicating it
    store.runs.write_chunk(run, mv, _chunk(ids[:1], rng))
    assert len(store.scores.candidate_classification(pool_id, mv).item_ids) == 9
    store.close()


def test_embeddings_sparse_lookup_and_non_finite_rows(db_url: str) -> None:
    rng = np.random.default_rng(3)
    store = Store.open(db_url)
    pool_id, ids = _register(store, 40)
    mv = _mv(store)
    run = store.runs.start(mv, pool_id, 40, "cpu", 4)
    chunk = _chunk(ids, rng)
    # a NaN, and a value float16 cannot hold: neither is stored
    chunk.scored[5] = replace(chunk.scored[5], embedding=np.array([np.nan, 0, 0, 1], np.float32))
    chunk.scored[6] = replace(chunk.scored[6], embedding=np.array([1e6, 0, 0, 0], np.float32))
    store.runs.write_chunk(run, mv, chunk)
    dense, found = store.scores.embeddings(mv, np.array(ids, dtype=np.int64), 4)
    assert found.sum() == 38 and not found[5] and not found[6] and np.isfinite(dense).all()
    # a non-finite row written before such embeddings were refused reads as missing
    with store.db.tx() as conn:
        conn.execute(
            insert(Embedding).values(
                item_id=ids[6], model_version_id=mv, vector=np.array([np.inf, 0, 0, 0], "<f2").tobytes()
            )
        )
    again, found_again = store.scores.embeddings(mv, np.array(ids, dtype=np.int64), 4)
    assert np.array_equal(found_again, found) and np.array_equal(again, dense)
    # a sparse request (ids far apart, one unknown) takes the IN-list path and gives the same rows
    query = np.array([ids[30], 10**9, ids[0], ids[5]], dtype=np.int64)
    sparse, found_sparse = store.scores.embeddings(mv, query, 4)
    assert list(found_sparse) == [True, False, True, False]
    assert np.array_equal(sparse[0], dense[30]) and np.array_equal(sparse[2], dense[0])
    store.close()


def test_selection_paths_come_from_the_selections_pool(db_url: str) -> None:
    store = Store.open(db_url)
    first, ids = _register(store, 2, pool="/a")
    second = store.pools.get_or_create("/b", "directory", "/b")
    # the same content under another name in a second pool (sorted before the first pool's name)
    store.pools.apply_scan(second, [ScannedFile("0_copy.jpg", 100, 1_000, f"{0:032x}")], [])
    assert store.pools.known_paths(second)["0_copy.jpg"].item_id == ids[0]
    mv = _mv(store)
    for pool_id, expected in ((first, "img_0.jpg"), (second, "0_copy.jpg")):
        sel = store.selections.record(
            pool_id=pool_id, model_version_id=mv, strategy="random", options={}, budget=1, item_ids=[ids[0]], scores=[1]
        )
        assert store.selections.items(sel)[0].path == expected
    store.close()


def test_invalid_and_selected_items_are_not_candidates(db_url: str) -> None:
    rng = np.random.default_rng(1)
    store = Store.open(db_url)
    pool_id, ids = _register(store, 6)
    mv = _mv(store)
    run = store.runs.start(mv, pool_id, 6, "cpu", 4)
    chunk = _chunk(ids, rng)
    chunk.scored[0] = replace(chunk.scored[0], problem="model output contains NaN or infinity")
    assert chunk.n_invalid == 1 and chunk.n_valid == 5
    store.runs.write_chunk(run, mv, chunk)
    assert store.runs.recent()[0]["invalid"] == 1 and store.runs.recent()[0]["scored"] == 5
    _, found = store.scores.embeddings(mv, np.array(ids, dtype=np.int64), 4)
    assert list(found) == [False] + [True] * 5  # an invalid output's embedding is not stored
    sel = store.selections.record(
        pool_id=pool_id,
        model_version_id=mv,
        strategy="entropy",
        options={},
        budget=2,
        item_ids=[ids[1], ids[2]],
        scores=[0.9, 0.8],
    )
    items = store.selections.items(sel)
    assert [(i.item_id, i.rank) for i in items] == [(ids[1], 1), (ids[2], 2)]
    assert items[0].path == "img_1.jpg" and len(items[0].content_id) == 32
    cands = store.scores.candidate_classification(pool_id, mv)
    assert list(cands.item_ids) == ids[3:]
    assert list(store.items.taken(pool_id)) == [ids[1], ids[2]]
    counts = store.items.counts(pool_id, mv)
    assert counts["invalid"] == 1 and counts["selected"] == 2
    store.close()


def test_detection_blobs_round_trip(db_url: str) -> None:
    store = Store.open(db_url)
    pool_id, ids = _register(store, 3)
    mv = _mv(store, "det-1", "detect", k=2)
    run = store.runs.start(mv, pool_id, 3, "cpu", 4)
    chunk = ScoredChunk()
    boxes = {ids[0]: 2, ids[1]: 0, ids[2]: 1}
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    for i, n in boxes.items():
        chunk.scored.append(
            ScoredItem(
                item_id=i,
                width=100,
                height=80,
                boxes=np.arange(4 * n, dtype=np.float32).reshape(n, 4),
                box_conf=np.full(n, 0.5, np.float32),
                box_scores=np.full((n, 2), 0.25, np.float32),
                polygons=[square + k for k in range(n)],
            )
        )
    store.runs.write_chunk(run, mv, chunk)
    det = store.scores.candidate_detection(pool_id, mv, 2)
    assert list(det.n_boxes) == [2, 0, 1]
    assert list(det.box_image_index) == [0, 0, 2]
    assert det.box_scores.shape == (3, 2)
    pred = store.scores.prediction(ids[0], mv, 2)
    assert pred is not None and pred.boxes.shape == (2, 4) and pred.boxes[1, 3] == 7 and pred.probs is None
    assert len(pred.polygons) == 2 and np.array_equal(pred.polygons[1], square + 1)
    assert np.allclose(pred.box_conf, 0.5) and np.allclose(pred.box_scores, 0.25)
    empty = store.scores.prediction(ids[1], mv, 2)
    assert empty is not None and empty.boxes.shape == (0, 4) and empty.polygons == []
    store.close()


def _open_and_migrate(url: str) -> str:
    try:
        Store.open(url).close()
        return "ok"
    except Exception as exc:
        return repr(exc)


@pytest.mark.heavy
def test_concurrent_first_use_migrates_once(db_url: str) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.map(_open_and_migrate, [db_url] * 3)
    assert results == ["ok", "ok", "ok"]


def test_bad_urls_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatabaseURLError, match="invalid database URL"):
        Store.open("not a url")
    with pytest.raises(DatabaseURLError, match="unsupported database URL"):
        Store.open("nosuchdb://x/y")
    with pytest.raises(DatabaseError, match=r"directory .* does not exist"):
        Store.open(f"sqlite:///{tmp_path}/missing/dir/c.db")


def test_unreachable_postgres_error_hides_password() -> None:
    url = "postgresql+psycopg://curate:hunter2secret@127.0.0.1:1/curate"
    with pytest.raises(DatabaseError) as info:
        Store.open(url)
    assert "hunter2secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value) and "***" in str(info.value)


def test_non_numeric_port_is_a_url_error_without_the_password() -> None:
    with pytest.raises(DatabaseURLError) as info:
        Store.open("postgresql+psycopg://curate:hunter2secret@db:notaport/curate")
    assert "hunter2secret" not in str(info.value)


def test_command_lines_are_stored_without_database_passwords() -> None:
    argv = ["loop", "--db", "postgresql+psycopg://u:hunter2@h/db", "--db=postgresql://u:pw2@h:5/d", "--budget", "5"]
    shown = " ".join(redact_argv(argv))
    assert "hunter2" not in shown and "pw2" not in shown
    assert shown == "loop --db postgresql+psycopg://u:***@h/db --db=postgresql://u:***@h:5/d --budget 5"


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Store.open(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    import store.db as db_module

    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "c.db"
    store = Store.open(f"sqlite:///{path}")
    _register(store, 3)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # e.g. a loop in the middle of writing a chunk
    try:
        assert store.items.counts(None, None)["items"] == 3  # a read-only transaction does not queue up
        with pytest.raises(DatabaseError, match="locked"):
            store.pools.get_or_create("/other", "directory", "/other")  # a write does wait, then fails clearly
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    store.close()


def test_a_database_migrated_by_a_newer_curate_names_the_revision_and_is_left_alone(db_url: str) -> None:
    from sqlalchemy import text
    from typer.testing import CliRunner

    from cli import app
    from curation.errors import ExitCode
    from store.db import known_revisions
    from store.errors import SchemaTooNewError

    with Store.open(db_url) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SchemaTooNewError, match=r"schema revision 0099, newer than this curate"):
        Store.open(db_url)
    for command in (["status"], ["models", "list"], ["score", "--pool", "/nowhere", "--model", "m.pt"]):
        result = CliRunner().invoke(app, [*command, "--db", db_url])
        assert result.exit_code == ExitCode.DATABASE, (command, result.stderr)
        assert "Traceback" not in result.stderr and "Can't locate" not in result.stderr
        assert "revision 0099" in result.stderr and f"newest is {known_revisions()[-1]}" in result.stderr
        assert "Upgrade curate" in result.stderr
    engine = create_store_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0099"  # never downgraded
    engine.dispose()
