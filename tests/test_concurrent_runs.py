"""A real second process while a scoring run is in flight (SQLite and Postgres): read-only commands never write
and never touch the live run; a second run is refused at once; the first run then finishes normally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from cli import app
from curation.errors import ExitCode
from store import Store
from tests.models import save_thumbnail_model

REPO = Path(__file__).resolve().parents[1]
REFUSAL_S = 3.0  # issue 10's acceptance bound for "a second run exits 8 at once"


def _cli(*args: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr, time.monotonic() - start


@contextmanager
def _another_writer_mid_transaction(db_url: str) -> Iterator[None]:
    """Someone holds a write transaction on ``scoring_runs`` (on SQLite: the database's write lock). Any write a
    command attempted would wait for it (SQLite's busy timeout is 30 s), so a fast answer proves it wrote
    nothing."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        conn.execute(text("SELECT id FROM scoring_runs FOR UPDATE"))
        try:
            yield
        finally:
            conn.rollback()
    engine.dispose()


def _read_only_url(db_url: str) -> str:
    """On Postgres, a session where every write fails: ``default_transaction_read_only``."""
    if not db_url.startswith("postgresql"):
        return db_url
    return db_url + quote(" -cdefault_transaction_read_only=on")


def test_read_only_commands_and_a_second_run_leave_a_live_run_alone(
    db_url: str, tmp_path: Path, pool_dir: Path
) -> None:
    # a TorchScript model fixed by construction: a real scoring run without training one first
    model, model_cfg = save_thumbnail_model(tmp_path)
    release = tmp_path / "release"
    env = {
        **os.environ,
        "CURATE_SCORING__CHUNK_SIZE": "4",
        "CURATE_SCORING__BATCH_SIZE": "4",
        "CURATE_PAUSEPOINT": f"score-after-chunk:{release}",
    }
    env.pop("CURATE_FAILPOINT", None)
    model_args = ["--pool", str(pool_dir), "--model", str(model), "--config", str(model_cfg), "--db", db_url]
    first = subprocess.Popen(
        [sys.executable, "-m", "cli", "score", *model_args, "--workers", "0", "--json"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waiting = release.with_name("release.waiting")
        deadline = time.monotonic() + 180
        while not waiting.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting.exists(), f"the scoring run never reached its pause point: {first.communicate(timeout=30)}"

        with _another_writer_mid_transaction(db_url):
            code, out, err, seconds = _cli("status", "--db", _read_only_url(db_url), "--pool", str(pool_dir), "--json")
            assert code == 0, err
            assert seconds < REFUSAL_S, f"status took {seconds:.1f} s: it waited for a write lock"
            runs = json.loads(out)["recent_runs"]
            assert runs[0]["status"] == "running" and runs[0]["scored"] >= 4

            for command in (["models", "list"], ["models", "current"], ["models", "show"]):
                code, _, err, seconds = _cli(*command, "--db", _read_only_url(db_url), "--json")
                assert code == 0 and seconds < REFUSAL_S, (command, err, seconds)

            code, _, err, seconds = _cli("select", *model_args, "--budget", "2", "--no-push", "--json")
            assert code == ExitCode.LOCKED, err
            assert "another run holds the lock" in err and f"pid {first.pid}" in err
            assert seconds < REFUSAL_S, f"the second select took {seconds:.1f} s to be refused"

        with Store.open(db_url) as store:
            assert store.runs.recent()[0]["status"] == "running"  # nobody marked the live run interrupted

        release.touch()
        out, err = first.communicate(timeout=180)
        assert first.returncode == 0, err
        assert json.loads(out)["scored"] == 24
        with Store.open(db_url) as store:
            runs = store.runs.recent()
            assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["scored"] == 24
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
            first.wait(30)


def test_the_next_lock_holder_closes_a_killed_run(db_url: str, tmp_path: Path) -> None:
    """A run left ``running`` by a dead process: reading leaves it; taking the lock marks it interrupted."""
    from store.lock import RunLock

    with Store.open(db_url) as store:
        pool_id = store.pools.get_or_create("/p", "directory", "/p")
        mv = store.models.register(
            version="m",
            source="m.pt",
            format="ultralytics",
            task="classify",
            class_names=["a"],
            imgsz=8,
            embedding_dim=None,
        )
        store.runs.start(mv.id, pool_id, 10, "cpu", 4)
    code, out, err, _ = _cli("status", "--db", db_url, "--json")
    assert code == 0, err
    assert json.loads(out)["recent_runs"][0]["status"] == "running"
    with Store.open(db_url) as store, RunLock(store, command="test"):
        assert store.runs.recent()[0]["status"] == "interrupted"


@pytest.mark.parametrize("command", [["status"], ["models", "list"]])
def test_read_only_commands_do_not_wait_for_a_writer_on_sqlite(tmp_path: Path, command: list[str]) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    Store.open(db_url).close()
    with _another_writer_mid_transaction(db_url):
        code, _, err, seconds = _cli(*command, "--db", db_url, "--json")
    assert code == 0 and seconds < REFUSAL_S, (err, seconds)
