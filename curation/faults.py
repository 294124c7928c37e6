"""Failpoints: named places where a test can make curate die as ``kill -9`` would, or wait, to prove crash safety
and what other processes see while a run is in flight.

- ``CURATE_FAILPOINT=<name>`` makes the process SIGKILL itself when it reaches ``checkpoint(<name>)``.
- ``CURATE_PAUSEPOINT=<name>:<file>`` makes it stop at ``checkpoint(<name>)``: it creates ``<file>.waiting`` and
  waits until ``<file>`` exists (then every later pass goes straight through).

Unset (always, outside tests), a checkpoint is two dictionary lookups and nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "CURATE_FAILPOINT"
PAUSE_ENV = "CURATE_PAUSEPOINT"


def checkpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        point, _, release = pause.partition(":")
        if point == name and release:
            _wait_for(Path(release))


def _wait_for(release: Path) -> None:
    if release.exists():
        return
    release.with_name(release.name + ".waiting").touch()
    while not release.exists():
        time.sleep(0.05)
