"""What every job needs: the store (opened read-only-safe), the run lock, the registry's current model."""

from __future__ import annotations

from typing import Any

from curation.config import Settings
from curation.errors import ModelLoadError
from store.lock import RunLock
from store.repository import ModelVersionRecord, Store


def open_store(settings: Settings) -> Store:
    store = Store.open(settings.db)
    store.close_stale_runs()
    return store


def run_lock(store: Store) -> RunLock:
    """The per-database run lock (see ``store.lock``): a second run exits at once with who holds it."""
    return RunLock(store)


def current_or_fail(store: Store) -> ModelVersionRecord:
    current = store.current_model()
    if current is None:
        raise ModelLoadError("the registry has no current model yet: run curate score or select with --model first")
    return current


def iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()
