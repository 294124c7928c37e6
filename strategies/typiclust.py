"""TypiClust: a cold-start strategy for tiny budgets — the most typical item of each uncovered cluster.

Reference: G. Hacohen, A. Dekel, D. Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low
Budgets", ICML 2022. With few labels, uncertainty is noise (a young model is unsure of everything) and the best
items are *typical* ones that cover the data's dense regions. The pool and the reference set (labeled and queued
items) are clustered with k-means into ``|reference| + budget`` clusters (at most ``max(max_clusters, budget)``);
each pick comes from the cluster with the fewest reference or picked items, the largest first, and is its member
with the highest typicality, ``1 / mean distance to its K nearest neighbours`` in the cluster (K =
``neighbors``, fewer in a small cluster; Euclidean distance between unit embeddings, as the authors use on
normalised features). Ignores the model's uncertainty (only excluded items are left out), so it works with a
random-init model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies._validate import is_int
from strategies.base import PoolView, Selection, StrategyBase
from strategies.cover import Cover
from strategies.errors import InvalidOptionError
from strategies.index import coarse_clusters, kmeans, make_index

__all__ = ["TypiClustStrategy", "typicality"]


def typicality(x: NDArray[np.float32], neighbors: int) -> NDArray[np.float64]:
    """Per row of ``x`` (unit rows): 1 / the mean Euclidean distance to its ``neighbors`` nearest other rows
    (fewer if there are fewer rows; a lone row gets 0 — nothing makes it typical)."""
    n = len(x)
    k = min(neighbors, n - 1)
    if k <= 0:
        return np.zeros(n, dtype=np.float64)
    index = make_index(x.shape[1], "cpu")
    index.add(x)
    dist, _ = index.nearest(x, k + 1)  # the row itself comes back first, at distance ~0
    cosine = np.sort(np.maximum(dist, 0.0).astype(np.float64), axis=1)[:, 1:]
    mean = np.sqrt(2.0 * cosine).mean(axis=1)  # |a - b| = sqrt(2 · cosine distance) for unit rows
    return 1.0 / (mean + 1e-12)


@dataclass(frozen=True)
class TypiClustStrategy(StrategyBase):
    """The most typical member of each uncovered k-means cluster; see the module docstring. Scores are each
    pick's typicality."""

    neighbors: int = 20
    max_clusters: int = 500
    name: str = field(default="typiclust", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not is_int(self.neighbors) or self.neighbors < 1:
            raise InvalidOptionError(
                f"typiclust option 'neighbors' must be an integer >= 1, got {self.neighbors!r}", option="neighbors"
            )
        if not is_int(self.max_clusters) or self.max_clusters < 1:
            raise InvalidOptionError(
                f"typiclust option 'max_clusters' must be an integer >= 1, got {self.max_clusters!r}",
                option="max_clusters",
            )

    def _select(self, pool: PoolView, budget: int) -> Selection:
        x = pool.embeddings_for(self.name)
        usable = np.flatnonzero(pool.usable)
        xs = x[usable]
        ref = pool.reference_embeddings
        n_ref = 0 if ref is None else len(ref)
        everything = xs if ref is None or n_ref == 0 else np.concatenate([xs, ref])
        k = int(min(len(everything), n_ref + budget, max(self.max_clusters, budget)))
        assign = kmeans(everything, k, seed=pool.seed).assignment
        sizes = np.bincount(assign, minlength=k)
        covered = np.bincount(assign[len(xs) :], minlength=k)  # reference items per cluster, then picks too
        own = assign[: len(xs)]
        left = np.bincount(own, minlength=k)  # candidates not yet picked or refused, per cluster
        cover = Cover(xs, ref, pool.min_distance)
        typical: dict[int, NDArray[np.float64]] = {}
        members: dict[int, NDArray[np.int64]] = {}
        alive = np.ones(len(xs), dtype=bool)
        picked: list[int] = []
        scores: list[float] = []
        skipped = 0
        while len(picked) < budget:
            open_clusters = np.flatnonzero(left > 0)
            if len(open_clusters) == 0:
                break
            # the least-covered cluster, the largest first, ties to the lower id
            c = int(open_clusters[np.lexsort((open_clusters, -sizes[open_clusters], covered[open_clusters]))[0]])
            if c not in typical:
                rows = np.flatnonzero(own == c)
                members[c] = rows
                # typicality among all the cluster's points, reference items included (they make a region dense)
                inside = everything[assign == c]
                typical[c] = typicality(inside, self.neighbors)[: len(rows)]
            rows, t = members[c], typical[c]
            order = np.lexsort((rows, -t))  # most typical first, ties to the lower index
            chosen = -1
            for j in order.tolist():
                r = int(rows[j])
                if not alive[r]:
                    continue
                alive[r] = False
                left[c] -= 1
                if cover.is_duplicate(r):
                    skipped += 1
                    continue
                chosen = j
                break
            if chosen < 0:
                continue
            r = int(rows[chosen])
            picked.append(r)
            scores.append(float(t[chosen]))
            covered[c] += 1
            cover.add(r)
        indices = usable[np.asarray(picked, dtype=np.int64)].astype(np.int64)
        return Selection(
            indices=indices,
            scores=np.asarray(scores, dtype=np.float64),
            clusters=coarse_clusters(x[indices], pool.seed),
            skipped=skipped,
        )
