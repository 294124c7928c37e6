"""2-D maps of embeddings: UMAP where the ``umap`` package is installed, else PCA in plain numpy."""

from __future__ import annotations

import importlib.util

import numpy as np
from numpy.typing import NDArray

UMAP_MIN_POINTS = 15  # below this UMAP's neighbourhood graph is degenerate; PCA says as much


def project_2d(vectors: NDArray[np.floating], seed: int = 0) -> tuple[NDArray[np.float64], str]:
    """(N, D) → (N, 2) coordinates and the method's name. Deterministic for a seed."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) >= UMAP_MIN_POINTS and importlib.util.find_spec("umap") is not None:
        try:
            import umap

            coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
            return np.asarray(coords, dtype=np.float64), "UMAP"
        except Exception:  # a broken optional install must not cost the report its map: fall back to PCA
            pass
    return pca_2d(x), "PCA"


def pca_2d(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The first two principal components (zeros where the data has fewer dimensions of variance); the sign of
    each axis is fixed so that reruns draw the same picture."""
    n = len(x)
    out = np.zeros((n, 2), dtype=np.float64)
    if n < 2:
        return out
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1.0
    out[:, :k] = centred @ (components * signs[:, None]).T
    return out
