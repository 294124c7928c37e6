"""What every job needs: the store, the run lock, the registry's current model."""

from __future__ import annotations

from typing import Any

from curation.config import Settings
from curation.errors import ModelLoadError
from store import Store
from store.lock import RunLock
from store.records import ModelVersionRecord


def open_store(settings: Settings) -> Store:
    """Open (and on first use migrate) the database. Opening writes nothing else: read-only commands use it as is,
    and runs left ``running`` by a dead process are closed by whoever takes the run lock (``RunLock``)."""
    return Store.open(settings.db)


def run_lock(store: Store) -> RunLock:
    """The per-database run lock (see ``store.lock``): a second run exits at once with who holds it; the holder
    closes the scoring runs a killed process left ``running``."""
    return RunLock(store)


def current_or_fail(store: Store) -> ModelVersionRecord:
    current = store.models.current()
    if current is None:
        raise ModelLoadError("the registry has no current model yet: run curate score or select with --model first")
    return current


def iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def wants_push(settings: Settings, push: bool | None, project_named: bool) -> bool:
    """Whether ``select`` pushes: ``--push/--no-push`` when given; otherwise wherever it can happen (a Label Studio
    URL is configured), and naming a project asks for it (failing before scoring if no URL is configured)."""
    if push is not None:
        return push
    return bool(settings.label_studio.url) or project_named
