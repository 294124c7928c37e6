"""A ``curate serve`` process for the test-suite and the benchmarks: started on a free loopback port, waited for
until ``/health`` answers, and stopped the way an operator would (SIGTERM) or killed the way a crash, an OOM kill
or a container restart does (SIGKILL to its whole process group: the server and the turn it may be running).

POSIX only: the server runs in its own session so that ``kill()`` reaches every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from curation.errors import CurateError

_LOG_TAIL_CHARS = 2000


class ServeStartError(CurateError):
    """``curate serve`` exited or did not answer ``/health`` in time (the message carries its log's tail)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServe:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path | None

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-_LOG_TAIL_CHARS:]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (what systemd and ``docker stop`` send), then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the server's process group — the server and the loop turn it runs — as a crash of the
        machine's or container's process tree would; waits until the server is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def group_alive(self) -> bool:
        """Whether a live (not zombie) process of the server's group is left — a turn outliving its server. Reads
        ``/proc`` where there is one (a killed orphan stays a zombie until its new parent reaps it)."""
        proc = Path("/proc")
        if not proc.is_dir():
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return False
            return True
        for stat in proc.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            state, pgid = fields[0], int(fields[2])
            if pgid == self.process.pid and state not in ("Z", "X"):
                return True
        return False


def start_local_serve(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path | None = None,
    port: int | None = None,
    timeout: float = 60.0,
) -> LocalServe:
    """Run ``curate serve --port PORT *args`` with this interpreter (``import cli; cli.main()``: the checkout's
    CLI, as ``PYTHONPATH`` in ``env`` finds it) and wait until ``/health`` answers 200. Output goes to ``log``
    (discarded without one)."""
    port = port or free_port()
    command = [sys.executable, "-c", "import cli; cli.main()", "serve", "--port", str(port), *args]
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    served = LocalServe(process, f"http://127.0.0.1:{port}", port, log)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServeStartError(f"curate serve exited with {process.returncode}: {served.log_tail()}")
            try:
                if client.get(f"{served.url}/health").status_code == 200:
                    return served
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    served.kill()
    raise ServeStartError(f"curate serve did not answer /health within {timeout:.0f} s: {served.log_tail()}")
