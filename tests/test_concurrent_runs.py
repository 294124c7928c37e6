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


@pytest.mark.heavy
def test_read_only_commands_and_a_second_run_leave_a_live_run_alone(
    db_url: str, tmp_path: Path, pool_dir: Path
) -> None:
    first, release, model_args = _paused_scoring_run(db_url, tmp_path, pool_dir, "--workers", "0", "--json")
    try:
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


def _paused_scoring_run(
    db_url: str, tmp_path: Path, pool_dir: Path, *flags: str
) -> tuple[subprocess.Popen[str], Path, list[str]]:
    """A real ``curate score`` (a TorchScript model fixed by construction: no training first) stopped after its
    first committed chunk, in its own process group as a systemd unit or a container has; and its model options."""
    model, model_cfg = save_thumbnail_model(tmp_path)
    release = tmp_path / "release"
    env = {
        **os.environ,
        "CURATE_SCORING__CHUNK_SIZE": "4",
        "CURATE_SCORING__BATCH_SIZE": "4",
        "CURATE_PAUSEPOINT": f"score-after-chunk:{release}",
    }
    env.pop("CURATE_FAILPOINT", None)
    args = ["--pool", str(pool_dir), "--model", str(model), "--config", str(model_cfg), "--db", db_url]
    run = subprocess.Popen(
        [sys.executable, "-m", "cli", "score", *args, *flags],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    waiting = release.with_name("release.waiting")
    deadline = time.monotonic() + 180
    while not waiting.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not waiting.exists():
        run.kill()
        raise AssertionError(f"the scoring run never reached its pause point: {run.communicate(timeout=30)}")
    return run, release, args


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.heavy
def test_sigterm_stops_a_run_like_ctrl_c(db_url: str, tmp_path: Path, pool_dir: Path) -> None:
    """``systemctl stop`` signals the whole process group: the run saves its scores, is marked interrupted,
    exits 143, and no process prints a traceback."""
    import signal

    run, release, _ = _paused_scoring_run(db_url, tmp_path, pool_dir, "--workers", "1")
    try:
        assert _children(run.pid), "the run has no DataLoader worker: the test proves nothing"
        os.killpg(run.pid, signal.SIGTERM)
        time.sleep(0.5)  # the stop lands in the pause; saving the partial chunk then passes the pause point again
        release.touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == ExitCode.TERMINATED, err
        assert "Traceback" not in out + err, err
        assert "Terminated: work done so far is saved" in err
        with Store.open(db_url) as store:
            runs = store.runs.recent()
            assert runs[0]["status"] == "interrupted" and runs[0]["scored"] >= 4
    finally:
        release.touch()
        if run.poll() is None:
            run.kill()
            run.wait(30)


@pytest.mark.heavy
def test_after_kill_9_the_lock_is_free_while_orphaned_workers_live_on(
    db_url: str, tmp_path: Path, pool_dir: Path
) -> None:
    """DataLoader workers outlive a killed run by seconds; they must not hold its lock (an inherited lock file
    descriptor or Postgres connection) meanwhile."""
    import signal

    from store.lock import RunLock

    run, release, _ = _paused_scoring_run(db_url, tmp_path, pool_dir, "--workers", "1")
    workers = _children(run.pid)
    try:
        assert workers, "the run has no DataLoader worker: the test proves nothing"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
        with Store.open(db_url) as store:
            with RunLock(store, command="test"):  # at once: no orphaned worker holds it (LockHeldError otherwise)
                pass
            assert store.runs.recent()[0]["status"] == "interrupted"
        assert any(_alive(w) for w in workers), "the workers were gone already: the test proves nothing"
    finally:
        release.touch()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait(30)
