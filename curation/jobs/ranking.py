"""The remaining pool ranked by uncertainty, as numpy arrays: what a notebook looks at between ``score`` and
``select``. Reads only; computed from the stored model outputs, so it never runs the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from curation.config import Settings
from curation.errors import ConfigError, PoolError, UnknownReferenceError
from curation.jobs.common import current_or_fail
from curation.scoring.pool import item_location, resolve_pool
from curation.selection import FALLBACK_MEASURE, build_strategy, candidate_uncertainty
from store import Store
from store.records import ModelVersionRecord
from strategies import UNCERTAINTY_MEASURES, canonical_name


@dataclass(frozen=True)
class RankedScores:
    """Selectable items of the pool (scored, never selected, queued or labeled), most uncertain first.

    The three arrays are aligned: ``uncertainty[i]`` is the score of the item at ``paths[i]``. Ties keep item id
    order. Items the measure excludes (e.g. detections without a box under ``strategy.detection.empty: exclude``)
    are left out.
    """

    model_version: str
    measure: str
    item_ids: NDArray[np.int64]
    """The database's item ids."""
    paths: NDArray[np.str_]
    """Each item's file path, as ``select``'s rows give it."""
    uncertainty: NDArray[np.float64]
    """Higher = more worth labeling; in [0, 1] for every measure."""

    def __len__(self) -> int:
        return len(self.item_ids)


def ranked_scores(
    store: Store,
    settings: Settings,
    *,
    model_version: str | None = None,
    measure: str | None = None,
) -> RankedScores:
    """Rank the selectable items of ``settings.pool.path`` by one uncertainty measure.

    ``model_version``: whose stored outputs to rank (default: ``settings.model.version``, else the registry's current
    model). ``measure``: one of ``least_confidence``, ``margin``, ``entropy``, ``ratio`` (default: the configured
    strategy's, or least confidence for strategies that rank otherwise, as ``curate status`` does).

    Raises:
        PoolError: no pool is configured, or it was never scanned (run ``score`` first).
        UnknownReferenceError: ``model_version`` is not in the database.
        ConfigError: an unknown measure or strategy.
    """
    source = resolve_pool(settings.pool.path)
    pool_id = store.pools.find(str(source.location))
    if pool_id is None:
        raise PoolError(f"the pool {source.location} has not been scanned into {store.display_url}: score it first")
    mv = _model_version(store, model_version or settings.model.version)
    if measure is None:
        chosen = build_strategy(settings.strategy, store).measure or FALLBACK_MEASURE
    elif canonical_name(measure) in UNCERTAINTY_MEASURES:
        chosen = canonical_name(measure)
    else:
        raise ConfigError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(UNCERTAINTY_MEASURES)}")
    cands = candidate_uncertainty(store, pool_id, mv, chosen, settings.strategy.detection)
    keep = ~np.isnan(cands.uncertainty)
    ids, values = cands.item_ids[keep], cands.uncertainty[keep]
    order = np.argsort(-values, kind="stable")  # candidates come in item id order: ties stay in it
    ids, values = ids[order], values[order]
    root = str(source.root)
    paths = np.array([item_location(root, p) for p in store.items.paths(pool_id, ids.tolist())], dtype=np.str_)
    return RankedScores(mv.version, chosen, ids, paths, values)


def _model_version(store: Store, version: str | None) -> ModelVersionRecord:
    if version is None:
        return current_or_fail(store)
    mv = store.models.get(version)
    if mv is None:
        raise UnknownReferenceError(f"model version {version!r} is not in the database (see curate models list)")
    return mv
