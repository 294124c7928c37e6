"""``Store``: one curate database (SQLite or Postgres) and its repositories, all over one transaction helper.

Each repository owns one concern — ``pools`` (scanning), ``items``, ``runs`` (scoring runs and the chunks they
write), ``scores`` (stored outputs read back for selection), ``selections``, ``models`` (the registry), ``labels``
(training data and splits), ``label_studio`` (projects, tasks, the queue, pulled annotations),
``recommendations`` (the strategy ``curate simulate`` recommended) — and every method is one transaction. Hot
paths use Core statements with executemany and blob columns (``store.blobs``), never per-row ORM flushes.
"""

from __future__ import annotations

from sqlalchemy import Engine

from store.db import Database, open_engine
from store.items import Items
from store.label_studio import LabelStudioRecords
from store.labels import Labels
from store.models import ModelRegistry
from store.pools import Pools
from store.recommendations import Recommendations
from store.runs import Runs
from store.scores import Scores
from store.selections import Selections


class Store:
    """Database access for one curate database. ``Store.open(url)`` connects and migrates on first use."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.db = Database(engine, url)
        self.pools = Pools(self.db)
        self.items = Items(self.db)
        self.runs = Runs(self.db)
        self.scores = Scores(self.db)
        self.selections = Selections(self.db)
        self.models = ModelRegistry(self.db)
        self.labels = Labels(self.db)
        self.label_studio = LabelStudioRecords(self.db)
        self.recommendations = Recommendations(self.db)

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and migrate to the latest schema (first use creates the tables; an up-to-date database is only
        read)."""
        return cls(open_engine(url), url)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def display_url(self) -> str:
        return self.db.display_url

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
