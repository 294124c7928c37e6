"""Writing a command's metrics to ``metrics.textfile`` (``--metrics-file``) after it ran, failed or not."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from curation.config import Settings
from curation.errors import ExitCode, exit_code_for


class RunRecord:
    """What the command reports to its metrics, set by the caller: ``scoring`` (a scoring summary), and ``error``
    (a kind) when the run finished but still failed (``loop`` after a training failure)."""

    def __init__(self) -> None:
        self.scoring: dict[str, Any] | None = None
        self.error: str | None = None


@contextlib.contextmanager
def recorded(settings: Settings, command: str) -> Iterator[RunRecord]:
    """Time the block and write the metrics file when it ends (no file configured: nothing happens)."""
    record = RunRecord()
    started = time.monotonic()
    error: str | None = None
    try:
        yield record
    except BaseException as exc:
        error = "interrupted" if isinstance(exc, KeyboardInterrupt) else _kind(exc)
        raise
    finally:
        if settings.metrics.textfile:
            write(settings, command, time.monotonic() - started, error or record.error, record.scoring)


def _kind(exc: BaseException) -> str:
    names = {v: k.lower() for k, v in vars(ExitCode).items() if k.isupper()}
    return names.get(exit_code_for(exc), "internal")


def write(settings: Settings, command: str, seconds: float, error: str | None, scoring: dict[str, Any] | None) -> None:
    from curation.jobs.common import open_store
    from curation.jobs.status import store_state
    from curation.metrics import write_textfile

    state = None
    # an unreachable database must not hide the run's own metrics
    with contextlib.suppress(Exception), open_store(settings) as store:
        state = store_state(store, settings)
    if settings.metrics.textfile:
        write_textfile(
            settings.metrics.textfile,
            command,
            seconds=seconds,
            ok=error is None,
            error_kind=error,
            scoring=scoring,
            state=state,
        )
