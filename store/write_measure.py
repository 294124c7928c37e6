"""A measurement of two ways to write prediction rows to Postgres (for ``bench/store_write_bench.py`` and the
scale plan, docs/SCALING.md): batched ``INSERT ... ON CONFLICT`` (what ``Runs.write_chunk`` does, psycopg 3
pipelines ``executemany``) vs ``COPY ... FROM STDIN``. Here because only ``store`` speaks SQL; it works in a
scratch schema that it drops, and touches no curate table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

DDL = (
    "CREATE TABLE bench_pred (item_id bigint NOT NULL, model_version_id int NOT NULL, probs bytea,"
    " PRIMARY KEY (item_id, model_version_id))",
    "CREATE TABLE bench_emb (item_id bigint NOT NULL, model_version_id int NOT NULL, vector bytea,"
    " PRIMARY KEY (item_id, model_version_id))",
)


def measure_writes(url: str, rows: Sequence[tuple[int, int, bytes, bytes]], chunk: int) -> dict[str, float]:
    """Seconds to write ``rows`` (item id, model version id, probabilities blob, embedding blob) in chunks of
    ``chunk`` (one transaction each), per method: ``{"insert": s, "copy": s}``. ``url``: a libpq URL."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            conn.execute(f"SET search_path TO {schema}")
            for statement in DDL:
                conn.execute(statement)
            for method in ("insert", "copy"):
                conn.execute("TRUNCATE bench_pred, bench_emb")
                started = time.perf_counter()
                for lo in range(0, len(rows), chunk):
                    part = rows[lo : lo + chunk]
                    with conn.transaction(), conn.cursor() as cur:
                        if method == "insert":
                            cur.executemany(
                                "INSERT INTO bench_pred VALUES (%s, %s, %s) ON CONFLICT (item_id, model_version_id)"
                                " DO UPDATE SET probs = excluded.probs",
                                [(r[0], r[1], r[2]) for r in part],
                            )
                            cur.executemany(
                                "INSERT INTO bench_emb VALUES (%s, %s, %s) ON CONFLICT (item_id, model_version_id)"
                                " DO UPDATE SET vector = excluded.vector",
                                [(r[0], r[1], r[3]) for r in part],
                            )
                        else:
                            with cur.copy("COPY bench_pred (item_id, model_version_id, probs) FROM STDIN") as copy:
                                for r in part:
                                    copy.write_row((r[0], r[1], r[2]))
                            with cur.copy("COPY bench_emb (item_id, model_version_id, vector) FROM STDIN") as copy:
                                for r in part:
                                    copy.write_row((r[0], r[1], r[3]))
                out[method] = time.perf_counter() - started
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return out
