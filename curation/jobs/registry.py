"""``curate models``: the registry's versions, one version in detail, promoting by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.errors import ModelLoadError, UnknownReferenceError
from curation.jobs.common import iso
from store import Store
from store.records import ModelVersionRecord


def models(store: Store) -> dict[str, Any]:
    current = store.models.current()
    return {
        "current": current.version if current else None,
        "versions": [_describe_version(mv, n, store) for mv, n in store.models.versions()],
    }


def model_detail(store: Store, version: str | None) -> dict[str, Any]:
    mv = store.models.get(version) if version else store.models.current()
    if mv is None and version:
        raise UnknownReferenceError(f"no model version {version!r} in {store.display_url}")
    if mv is None:
        raise ModelLoadError("the registry has no current model yet")
    counts = {m.version: n for m, n in store.models.versions()}
    return _describe_version(mv, counts.get(mv.version, 0), store) | {
        "class_names": mv.class_names,
        "metrics": mv.metrics,
    }


def promote(store: Store, version: str) -> dict[str, Any]:
    mv = store.models.get(version)
    if mv is None:
        raise UnknownReferenceError(f"no model version {version!r} in {store.display_url}")
    if mv.weights_path and not Path(mv.weights_path).is_file():
        raise ModelLoadError(f"the weights of {version} are missing: {mv.weights_path}")
    previous = store.models.current()
    store.models.set_current(mv.id, note="promoted by hand")
    return {"current": mv.version, "previous": previous.version if previous else None}


def _describe_version(mv: ModelVersionRecord, predictions: int, store: Store) -> dict[str, Any]:
    parent = store.models.by_id(mv.parent_id) if mv.parent_id else None
    return {
        "version": mv.version,
        "status": mv.status,
        "task": mv.task,
        "classes": len(mv.class_names),
        "parent": parent.version if parent else None,
        "metric": mv.metric_name,
        "value": mv.metric_value,
        "n_labeled": mv.n_labeled,
        "dataset_hash": mv.dataset_hash,
        "weights": mv.weights_path or mv.source,
        "trained_at": iso(mv.trained_at),
        "created_at": iso(mv.created_at),
        "predictions": predictions,
        "note": mv.note,
    }
