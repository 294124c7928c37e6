"""``curate pull``: bring finished annotations (and skips) from Label Studio into the store."""

from __future__ import annotations

from curation.config import Settings
from curation.labelstudio.project import connect
from curation.labelstudio.pull import PullReport
from curation.labelstudio.pull import pull as pull_annotations
from curation.progress import Progress
from store import Store


def pull(store: Store, settings: Settings, *, progress: Progress | None = None) -> PullReport:
    ls = connect(settings.label_studio)
    return pull_annotations(store, ls, settings.label_studio.project, progress=progress)
