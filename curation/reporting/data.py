"""The records a report is drawn from: plain data gathered by ``curation.jobs.report``, no database, no drawing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Item states on the embedding map, in drawing order (later ones are drawn on top).
STATES = ("remaining", "selected", "queued", "labeled")


@dataclass(frozen=True)
class Series:
    """A cumulative count over time: ``values[i]`` holds from ``times[i]`` on."""

    name: str
    times: list[datetime]
    values: list[int]


@dataclass(frozen=True)
class Distribution:
    """One model version's uncertainty over the items still selectable (unselected, unqueued, unlabeled)."""

    version: str
    task: str
    measure: str
    current: bool
    created_at: datetime
    values: NDArray[np.float64]

    def quantiles(self) -> dict[str, float]:
        if len(self.values) == 0:
            return {}
        names = ("min", "p25", "median", "p75", "p90", "max")
        qs = np.quantile(self.values, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
        return {n: float(q) for n, q in zip(names, qs, strict=True)}


@dataclass(frozen=True)
class Thumbnail:
    """One item at the top of the queue: its place, file, current uncertainty and a small JPEG (None: unreadable)."""

    item_id: int
    position: int
    path: str
    score: float | None
    jpeg: bytes | None
    problem: str | None = None


@dataclass(frozen=True)
class EmbeddingMap:
    """2-D coordinates of (a sample of) the pool's embeddings and each point's state (one of ``STATES``)."""

    model_version: str
    method: str  # "PCA" or "UMAP"
    coords: NDArray[np.float64]  # (N, 2)
    states: list[str]
    item_ids: NDArray[np.int64]
    embedded: int  # items with an embedding (the map may show a sample of the remaining ones)


@dataclass(frozen=True)
class ClassBalance:
    """Per class: how many selected items the current model predicts to contain it, and how many labeled items do."""

    classes: list[str]
    selected: list[int]
    labeled: list[int]
    n_selected: int  # selected items with a valid prediction of the current model
    n_labeled: int
    model_version: str


@dataclass(frozen=True)
class Curves:
    """``curate simulate``'s learning curves: strategy → [(labels, mean, std)], and its headline."""

    source: str
    metric: str
    title: str
    curves: dict[str, list[tuple[int, float, float]]]
    headline: dict[str, Any] | None


@dataclass
class ReportData:
    generated_at: datetime
    database: str
    pool: str | None
    current_model: str | None
    task: str | None
    counts: dict[str, int]
    timeline: list[Series] = field(default_factory=list)
    distributions: list[Distribution] = field(default_factory=list)
    embedding_map: EmbeddingMap | None = None
    queue: list[Thumbnail] = field(default_factory=list)
    queue_source: str = ""
    balance: ClassBalance | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)
    simulation: Curves | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to report: no item was ever scanned and no model used."""
        return self.counts.get("items", 0) == 0 and not self.versions
