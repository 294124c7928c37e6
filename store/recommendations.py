"""The strategy ``curate simulate`` recommended for this database's data, kept for ``strategy: auto``.

One JSON value in the ``settings`` table (no schema change): the latest recommendation replaces the previous one.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from store.db import Database
from store.schema import Setting

RECOMMENDATION_KEY = "strategy_recommendation"


class Recommendations:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, recommendation: dict[str, Any]) -> None:
        """Keep ``recommendation`` (JSON-serialisable, with a ``strategy`` name) as the latest one."""
        value = json.dumps(recommendation, sort_keys=True)
        with self._db.tx() as conn:
            conn.execute(
                self._db.insert(Setting)
                .values(key=RECOMMENDATION_KEY, value=value)
                .on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )

    def latest(self) -> dict[str, Any] | None:
        """The latest recommendation, or None (never simulated, or a value that is not a recommendation)."""
        with self._db.tx(write=False) as conn:
            value = conn.execute(select(Setting.value).where(Setting.key == RECOMMENDATION_KEY)).scalar_one_or_none()
        if value is None:
            return None
        try:
            data = json.loads(value)
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("strategy"), str) else None
