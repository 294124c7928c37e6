"""Vector search and clustering behind one small interface: FAISS on the CPU, torch on a CUDA GPU.

Embeddings are L2-normalised, so the distance used everywhere is the **cosine distance** ``1 - x·y`` (0 for
identical directions, 1 for orthogonal, 2 for opposite). This is the backend layer: it expects unit rows and does
not check them (``PoolView``, ``greedy_select`` and ``coarse_clusters`` normalise at the boundary). Strategies call
``make_index`` / ``kmeans`` and never import FAISS or torch themselves, and neither is imported before a function
here needs it; ``faiss-cpu`` is a required dependency, a GPU path is used when torch sees CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from strategies._validate import unit_rows
from strategies.errors import InvalidOptionError

_SEARCH_BLOCK = 65_536  # query rows per search call: bounds the (block x k) result buffers
_TORCH_SIMS_BYTES = 512 * 2**20  # the torch index materialises (block x ntotal) similarities: cap that matrix


class VectorIndex(Protocol):
    """Exact nearest-neighbour search by cosine distance over the vectors added so far."""

    @property
    def ntotal(self) -> int: ...

    def add(self, vectors: NDArray[np.float32]) -> None: ...

    def nearest(self, queries: NDArray[np.float32], k: int = 1) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """(distances, indices), each (n, k), nearest first; -1 / inf where fewer than k vectors exist."""
        ...


class FaissIndex:
    """Inner-product flat index (exact): blocked BLAS matrix products, multi-threaded."""

    def __init__(self, dim: int) -> None:
        import faiss

        self._index = faiss.IndexFlatIP(dim)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: NDArray[np.float32]) -> None:
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def nearest(self, queries: NDArray[np.float32], k: int = 1) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        if self.ntotal == 0 or len(queries) == 0:
            return dist, idx
        for start in range(0, len(queries), _SEARCH_BLOCK):
            sims, found = self._index.search(queries[start : start + _SEARCH_BLOCK], k)
            valid = found >= 0
            dist[start : start + len(found)] = np.where(valid, 1.0 - sims, np.inf)
            idx[start : start + len(found)] = found
        return dist, idx


class TorchIndex:
    """The same search with torch matrix products, for a CUDA GPU (faiss-cpu has no GPU code)."""

    def __init__(self, dim: int, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)
        self._vectors = torch.zeros((0, dim), dtype=torch.float32, device=self._device)

    @property
    def ntotal(self) -> int:
        return int(self._vectors.shape[0])

    def add(self, vectors: NDArray[np.float32]) -> None:
        t = self._torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32), device=self._device)
        self._vectors = self._torch.cat([self._vectors, t])

    def nearest(self, queries: NDArray[np.float32], k: int = 1) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        torch = self._torch
        dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        if self.ntotal == 0 or len(queries) == 0:
            return dist, idx
        kk = min(k, self.ntotal)
        block = max(1, min(_SEARCH_BLOCK, _TORCH_SIMS_BYTES // (4 * self.ntotal)))
        for start in range(0, len(queries), block):
            q = torch.as_tensor(np.ascontiguousarray(queries[start : start + block]), device=self._device)
            sims, found = torch.topk(q @ self._vectors.T, kk, dim=1)
            dist[start : start + len(q), :kk] = (1.0 - sims).cpu().numpy()
            idx[start : start + len(q), :kk] = found.cpu().numpy()
        return dist, idx


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def make_index(dim: int, device: str = "auto") -> VectorIndex:
    """``auto``: torch on CUDA when present, FAISS on the CPU otherwise; ``cpu``, ``cuda`` force one."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidOptionError(f"index device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") or (device == "auto" and gpu_available()):
        return TorchIndex(dim, "cuda" if device == "auto" else device)
    return FaissIndex(dim)


def center_in_place(vectors: NDArray[np.float32], *others: NDArray[np.float32]) -> None:
    """Subtract the common mean of all given sets and re-normalise each row, in place.

    Pooled CNN features share a large common component (they are non-negative after the activation), so raw
    cosine distances between unrelated images are small and model-dependent; centred, unrelated images sit near
    distance 1 and near-duplicates near 0, whatever the model. The same mean is used for every set so that
    distances between them stay comparable.
    """
    sets = [vectors, *[o for o in others if o is not None and len(o)]]
    total = sum(len(s) for s in sets)
    if total == 0:
        return
    mean = sum(s.sum(axis=0, dtype=np.float64) for s in sets) / total
    mean32 = mean.astype(np.float32)
    for s in sets:
        s -= mean32
        norms = np.linalg.norm(s, axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        s /= norms


def min_cosine_distance(
    vectors: NDArray[np.float32], reference: NDArray[np.float32] | None, device: str = "auto"
) -> NDArray[np.float32]:
    """For each vector, the cosine distance to its nearest reference vector (inf without references)."""
    out = np.full(len(vectors), np.inf, dtype=np.float32)
    if reference is None or len(reference) == 0 or len(vectors) == 0:
        return out
    index = make_index(vectors.shape[1], device)
    index.add(reference)
    dist, _ = index.nearest(vectors, 1)
    return np.maximum(dist[:, 0], 0.0).astype(np.float32)


@dataclass(frozen=True)
class KMeansResult:
    centroids: NDArray[np.float32]  # (k, D)
    assignment: NDArray[np.int64]  # (N,) cluster of each vector
    iterations: int  # FAISS stops early when the objective stops changing
    trained_on: int  # FAISS trains on at most 256 points per centroid (a seeded subsample)


def kmeans(
    vectors: NDArray[np.float32],
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    spherical: bool = True,
) -> KMeansResult:
    """FAISS k-means (spherical: centroids re-normalised, matching cosine distance), then every vector assigned
    to its nearest centroid."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise InvalidOptionError(f"k-means needs 1 <= k <= n, got k={k} for n={len(x)}")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        gpu=False,  # faiss-cpu builds have no GPU k-means
        verbose=False,
        min_points_per_centroid=1,  # small pools are fine: no "please provide more points" warning on stderr
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return KMeansResult(
        centroids=np.asarray(km.centroids, dtype=np.float32),
        assignment=assign[:, 0].astype(np.int64),
        iterations=len(km.iteration_stats or []),
        trained_on=min(len(x), k * int(km.cp.max_points_per_centroid)),
    )


def coarse_clusters(embeddings: NDArray[np.float32], seed: int = 0) -> NDArray[np.int64]:
    """Group selected items into about √k clusters (k-means), for Label Studio's per-annotator cluster balancing:
    each annotator is served from the groups they labeled least. Rows are rescaled to unit length first."""
    x = unit_rows(embeddings)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    groups = int(np.clip(round(np.sqrt(len(x))), 1, len(x)))
    if groups == 1:
        return np.zeros(len(x), dtype=np.int64)
    return kmeans(x, groups, seed=seed, niter=10).assignment
