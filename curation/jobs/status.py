"""``curate status``: counts, model versions, the score distribution and recent runs. Never writes."""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.config import Settings
from curation.errors import CurateError
from curation.jobs.common import iso
from curation.scoring.pool import resolve_pool
from curation.selection import FALLBACK_MEASURE, build_strategy, candidate_uncertainty
from store import Store
from store.records import ModelVersionRecord


def status(store: Store, settings: Settings) -> dict[str, Any]:
    """Counts, model versions, score distribution and recent runs, as plain data."""
    pool_id = None
    pool_location = None
    if settings.pool.path:
        source = resolve_pool(settings.pool.path)
        pool_location = str(source.location)
        pool_id = store.pools.find(pool_location)
    versions = store.models.versions()
    runs = store.runs.recent()
    current: ModelVersionRecord | None = None
    if settings.model.version:
        current = store.models.get(settings.model.version)
    else:
        current = store.models.current()
        if current is None and runs:
            current = store.models.get(runs[0]["model_version"])
    counts = store.items.counts(pool_id, current.id if current else None)
    distribution = None
    pools = [pool_id] if pool_id is not None else [p for p, _ in store.pools.all()]
    if current is not None and pools:
        strategy = build_strategy(settings.strategy, store)
        measure = strategy.measure or FALLBACK_MEASURE
        by_item: dict[int, float] = {}  # every pool's candidates, an item in several pools once
        for pool in pools:
            cands = candidate_uncertainty(store, pool, current, measure, settings.strategy.detection)
            by_item.update(zip(cands.item_ids.tolist(), cands.uncertainty.tolist(), strict=True))
        values = np.array(list(by_item.values()), dtype=np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
            hist, edges = np.histogram(values, bins=10)
            distribution = {
                "measure": measure,
                "candidates": len(values),
                "quantiles": dict(zip(["min", "p25", "median", "p75", "p90", "max"], map(float, qs), strict=True)),
                "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
            }
    return {
        "database": store.display_url,
        "pool": pool_location,
        "counts": counts,
        "current_model_version": current.version if current else None,
        "model_versions": [
            {
                "version": mv.version,
                "task": mv.task,
                "classes": len(mv.class_names),
                "predictions": n,
                "source": mv.source,
                "created_at": mv.created_at.isoformat(),
            }
            for mv, n in versions
        ],
        "score_distribution": distribution,
        "recent_runs": [{**r, "started_at": iso(r["started_at"]), "finished_at": iso(r["finished_at"])} for r in runs],
        "recent_selections": [{**s, "created_at": iso(s["created_at"])} for s in store.selections.recent()],
        "failures": [{"path": p, "reason": r} for p, r in store.items.failures(pool_id, limit=20)],
    }


def store_state(store: Store, settings: Settings) -> dict[str, Any]:
    """What the metrics show of the store: counts (in the configured pool, if any), labels not yet trained on,
    and the current model's metric. Read-only and light (a few counting queries)."""
    pool_id = None
    if settings.pool.path:
        try:
            pool_id = store.pools.find(str(resolve_pool(settings.pool.path).location))
        except CurateError:
            pool_id = None
    current = store.models.current()
    counts = store.items.counts(pool_id, current.id if current else None)
    last = store.models.latest_trained()
    trained_on = (last.n_labeled or 0) if last else 0
    return {
        **counts,
        "labels_since_training": max(counts["labeled"] - trained_on, 0),
        "model_version": current.version if current else None,
        "metric_name": current.metric_name if current else None,
        "metric_value": current.metric_value if current else None,
    }
