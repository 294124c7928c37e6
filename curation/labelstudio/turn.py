"""One loop turn's view of Label Studio: the project is read once per turn, not once per step.

A turn's steps (pull, then reprioritize) each look the project up by title and read it; without this, an idle
turn asks Label Studio the same two questions twice. Answers are kept only until the turn changes something in
Label Studio (any call that is not a read), after which the next read asks the server again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from curation.labelstudio.client import LabelStudioAPI

KEPT = frozenset({"project", "projects_titled"})
"""Reads answered from the turn's first answer."""
READS = frozenset(
    {
        "whoami",
        "local_storage_paths",
        "s3_storage_buckets",
        "task",
        "task_page",
        "model_versions",
        "task_predictions",
        "ml_backends",
        "webhooks",
        "download",
    }
)
"""Reads passed through; every other method may change a project, and forgets what was kept."""


class TurnReads:
    """``LabelStudioAPI`` over another one, keeping the answers of ``KEPT`` reads until the next write. Callers
    get copies: a handle that edits its project dict (``ProjectHandle.remote``) cannot change a kept answer."""

    def __init__(self, ls: LabelStudioAPI) -> None:
        self._ls = ls
        self._kept: dict[tuple[str, tuple[Any, ...]], Any] = {}

    @property
    def url(self) -> str:
        return self._ls.url

    @url.setter
    def url(self, value: str) -> None:
        self._ls.url = value

    @property
    def user(self) -> str | None:
        return self._ls.user

    @user.setter
    def user(self, value: str | None) -> None:
        self._ls.user = value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ls, name)
        if not callable(attr) or name in READS or name.startswith("_"):
            return attr
        if name in KEPT:
            return self._keeping(name, attr)

        def write(*args: Any, **kwargs: Any) -> Any:
            self._kept.clear()
            return attr(*args, **kwargs)

        return write

    def _keeping(self, name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def kept(*args: Any, **kwargs: Any) -> Any:
            key = (name, (*args, *sorted(kwargs.items())))
            if key not in self._kept:
                self._kept[key] = read(*args, **kwargs)
            return copy.deepcopy(self._kept[key])

        return kept


def turn_reads(ls: LabelStudioAPI) -> LabelStudioAPI:
    """``ls`` for one loop turn (see the module's docstring)."""
    return TurnReads(ls)
