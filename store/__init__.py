"""The only package that speaks SQL: items, scores, embeddings, selections, the registry and Label Studio
bookkeeping (SQLite or Postgres). ``from store import Store``; records in ``store.records``, blob formats in
``store.blobs``."""

from store.store import Store

__all__ = ["Store"]
