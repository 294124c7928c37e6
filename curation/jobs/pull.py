"""``curate pull``: bring finished annotations (and skips) from Label Studio into the store."""

from __future__ import annotations

from curation.config import Settings
from curation.labelstudio import queue
from curation.progress import Progress
from store import Store


def pull(store: Store, settings: Settings, *, progress: Progress | None = None) -> queue.PullReport:
    ls = queue.connect(settings)
    return queue.pull(store, settings, ls, progress=progress)
