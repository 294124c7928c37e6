"""Reading a labeled item's bytes when it is not a local file (training and ``curate export``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.config import Settings
from store.records import LabeledExample


def remote_bytes(settings: Settings) -> Callable[[LabeledExample], bytes | None]:
    """The bytes of a labeled item that is not a local file, for training's dataset: an object of an ``s3://`` pool
    or a manifest's URI line (``pool.s3.*``, ``pool.http.*``), an ``ls://`` pool task's image (through Label
    Studio, connected on first need). None (and a skipped item) when it cannot be read now."""
    from curation.objects.source import ObjectReadError
    from curation.objects.uris import uri_reader

    readers: dict[str, Any] = {}

    def fetch(example: LabeledExample) -> bytes | None:
        root = example.pool_root or ""
        if root.startswith("ls://"):
            reader = readers.get(root)
            if reader is None:
                from curation.labelstudio.pool import task_images
                from curation.labelstudio.project import connect, find_project

                ls = connect(settings.label_studio)
                remote = find_project(ls, root[len("ls://") :])
                reader = task_images(ls, settings.pool, project_id=int(remote["id"]) if remote else None)
                readers[root] = reader
        elif "://" in example.path:
            reader = readers.get("") or readers.setdefault("", uri_reader(settings.pool))
        else:
            return None
        result = reader.read_many([example.path])[0]
        return None if isinstance(result, ObjectReadError) else bytes(result)

    return fetch
