"""Errors raised by the store. Messages never contain a database password."""

from __future__ import annotations


class DatabaseError(Exception):
    """The database cannot be opened, reached or written."""


class SchemaTooNewError(DatabaseError):
    """The database was migrated by a newer curate: this one does not know its schema and never downgrades it."""


class DatabaseURLError(DatabaseError):
    """The database URL is malformed or names a driver that is not installed."""


class LockHeldError(Exception):
    """Another curate run holds this database's run lock."""


class RegistryConflictError(Exception):
    """A model version name or id given as a scoring model names a registered image encoder (``embedding.model``)."""
