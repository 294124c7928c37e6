"""Loop turns asked for by webhooks (``curate serve``): debounced, one at a time, in a child process.

A webhook only *asks* for a turn; the HTTP answer never waits for it. Requests within ``debounce_s`` of each other
make one turn; a request that arrives while a turn runs makes one more turn after it (the running turn may have
pulled before that annotation existed). Each turn is ``curate loop``'s job in a fresh process under the same run
lock as cron, so the server's event loop is never slowed by training, the server process never imports torch
for it, and a crash of the turn cannot take the server down. If another run (cron) holds the lock, the turn is
tried again later, backing off; cron stays the safety net, so a lost webhook delays a label, never loses it.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from curation.config import Settings

RETRY_S = (15.0, 30.0, 60.0, 120.0, 300.0)  # after "locked": another run held the lock


@dataclass
class TurnResult:
    outcome: str  # ok | training_failed | locked | failed
    seconds: float = 0.0
    summary: dict[str, Any] | None = None
    error: str | None = None
    error_kind: str | None = None


@dataclass
class TurnState:
    running: bool = False
    pending: bool = False
    due_in_s: float | None = None
    requests: int = 0
    turns: int = 0
    last: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)


def run_turn(settings: Settings) -> TurnResult:
    """One loop turn in a child process (spawned: no state shared with the server but the settings)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(settings, send), name="curate-turn", daemon=True)
    started = time.monotonic()
    process.start()
    send.close()
    result: TurnResult | None = None
    try:
        if receive.poll(None):
            result = receive.recv()
    except EOFError:  # the child died without answering (killed, out of memory)
        result = None
    process.join()
    seconds = time.monotonic() - started
    if result is None:
        return TurnResult(
            "failed", seconds, error=f"the turn's process exited with {process.exitcode}", error_kind="crash"
        )
    result.seconds = seconds
    return result


def _child(settings: Settings, send: Any) -> None:
    import os

    from curation.errors import exit_code_for
    from curation.jobs.common import open_store
    from store.errors import LockHeldError
    from store.lock import RunLock

    os.nice(10)  # background work: the server answering Label Studio keeps the CPU first
    started = time.monotonic()
    result: TurnResult
    try:
        from curation.jobs.loop import loop

        with open_store(settings) as store, RunLock(store, command="curate serve (loop turn for a webhook)"):
            report = loop(store, settings)
        outcome = "training_failed" if report.training_error else "ok"
        result = TurnResult(outcome, summary=report.summary(), error=report.training_error)
        _write_metrics(settings, time.monotonic() - started, result)
    except LockHeldError as exc:
        result = TurnResult("locked", error=str(exc), error_kind="locked")
    except Exception as exc:
        code = exit_code_for(exc)
        result = TurnResult("failed", error=str(exc).splitlines()[0][:500], error_kind=_kind(exc, code))
        _write_metrics(settings, time.monotonic() - started, result)
    send.send(result)
    send.close()


def _kind(exc: BaseException, code: int) -> str:
    from curation.errors import ExitCode

    names = {v: k.lower() for k, v in vars(ExitCode).items() if k.isupper()}
    return names.get(code, type(exc).__name__)


def _write_metrics(settings: Settings, seconds: float, result: TurnResult) -> None:
    from curation.jobs.metrics import write

    error = result.error_kind or ("training" if result.outcome == "training_failed" else None)
    write(settings, "loop", seconds, error, (result.summary or {}).get("scoring"))


class TurnScheduler:
    """Debounces turn requests and runs at most one turn at a time on its own thread (see the module docstring).
    ``runner`` runs one turn (default: ``run_turn`` in a child process); ``on_finish`` sees each result (the
    server sets it to count turns in its metrics)."""

    def __init__(
        self,
        settings: Settings,
        *,
        debounce_s: float,
        runner: Callable[[Settings], TurnResult] = run_turn,
        on_finish: Callable[[TurnResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._debounce = debounce_s
        self._runner = runner
        self.on_finish = on_finish
        self._clock = clock
        self._cond = threading.Condition()
        self._due: float | None = None
        self._first_request: float | None = None
        self._running = False
        self._stopped = False
        self._retries = 0
        self.state = TurnState()
        self._thread = threading.Thread(target=self._work, name="curate-turns", daemon=True)
        self._thread.start()

    def request(self, reason: str) -> TurnState:
        """Ask for a turn; returns at once with what is scheduled."""
        with self._cond:
            now = self._clock()
            if self._first_request is None:
                self._first_request = now
            # debounce, but a steady stream of webhooks must not postpone the turn for ever
            self._due = min(now + self._debounce, self._first_request + 4 * max(self._debounce, 1.0))
            self._retries = 0
            self.state.requests += 1
            self.state.reasons = [*self.state.reasons[-9:], reason]
            self._cond.notify_all()
            return self._snapshot(now)

    def snapshot(self) -> TurnState:
        with self._cond:
            return self._snapshot(self._clock())

    def _snapshot(self, now: float) -> TurnState:
        self.state.running = self._running
        self.state.pending = self._due is not None
        self.state.due_in_s = None if self._due is None else round(max(self._due - now, 0.0), 3)
        return TurnState(**vars(self.state))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Until no turn runs or is scheduled (tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running or self._due is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._due is None or self._clock() < self._due):
                    wait = None if self._due is None else max(self._due - self._clock(), 0.0)
                    self._cond.wait(wait if wait is None else min(wait, 1.0))
                if self._stopped:
                    return
                self._due = None
                self._first_request = None
                self._running = True
            try:
                result = self._runner(self._settings)
            except Exception as exc:  # the runner itself failed (cannot spawn): report it, keep serving
                result = TurnResult("failed", error=str(exc).splitlines()[0][:500], error_kind="spawn")
            with self._cond:
                self._running = False
                self.state.turns += 1
                self.state.last = {
                    "outcome": result.outcome,
                    "seconds": round(result.seconds, 3),
                    "error": result.error,
                    "finished_at": time.time(),
                }
                if result.outcome == "locked" and self._due is None:
                    self._due = self._clock() + RETRY_S[min(self._retries, len(RETRY_S) - 1)]
                    self._retries += 1
                self._cond.notify_all()
            if self.on_finish is not None:
                self.on_finish(result)
