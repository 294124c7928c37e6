"""Failpoints: named places where a test can make curate die as ``kill -9`` would, to prove crash safety.

``CURATE_FAILPOINT=<name>`` makes the process SIGKILL itself when it reaches ``checkpoint(<name>)``. Unset (always,
outside tests), a checkpoint is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

ENV = "CURATE_FAILPOINT"


def checkpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
