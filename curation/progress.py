"""How long-running library calls report progress without knowing about the terminal.

The CLI passes a rich-backed implementation; library callers and tests use ``NullProgress``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None) -> None:
        """Begin a phase with ``total`` units (None if unknown)."""

    def advance(self, amount: int = 1, rate: float | None = None) -> None:
        """``amount`` more units done; ``rate`` is items per second when the caller measures it."""

    def finish(self) -> None:
        """End the current phase."""

    def warn(self, message: str) -> None:
        """Report something the user should see once (e.g. a skipped file), without stopping."""


class NullProgress:
    """Progress that goes nowhere; warnings are kept so callers and tests can inspect them."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int = 1, rate: float | None = None) -> None:
        pass

    def finish(self) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)
