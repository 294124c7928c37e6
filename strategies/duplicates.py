"""Near-duplicates by perceptual hash: which candidates are copies of a taken item or of each other.

A perceptual hash (64 bits, see ``curation.scoring.images.perceptual_hash``) does not depend on the scoring model,
so exact and near-exact copies — resized, re-encoded, another format — are found even while the model is young or
random, when embedding distances say little. Two hashes within ``max_distance`` bits (Hamming distance) are
copies. ``hash_duplicates`` marks every candidate that is a copy of a reference item (selected, queued or labeled,
anywhere in the database) or of a candidate that comes before it in priority order, so that of a group of copies
exactly one survives: the most uncertain, ties to the lower index.

Exact and fast on large pools: multi-index hashing. With the 64 bits cut into ``max_distance + 1`` bands, two
hashes within ``max_distance`` bits agree exactly on at least one band (pigeonhole), so only hashes that share a
band value are ever compared; identical hashes are collapsed first (a pool of a thousand blank frames costs one
comparison, not a million).
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies._validate import is_int
from strategies.errors import InvalidOptionError, InvalidScoresError

__all__ = ["MAX_HASH_DISTANCE", "hamming", "hash_duplicates"]

MAX_HASH_DISTANCE = 16  # beyond this a 64-bit hash matches unrelated images, and the bands get too narrow
_PAIR_BLOCK = 1 << 22  # hash comparisons per block (bounds the (rows x group) distance matrices)


def hamming(a: ArrayLike, b: ArrayLike) -> NDArray[np.int64]:
    """Bitwise Hamming distance between 64-bit hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))).astype(
        np.int64
    )


def _hashes(values: ArrayLike, what: str) -> NDArray[np.uint64]:
    arr = np.asarray(values)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
        raise InvalidScoresError(f"{what} must be a 1-D array of 64-bit integer hashes, got {arr.dtype} {arr.shape}")
    return arr.astype(np.uint64, copy=False) if arr.dtype != np.int64 else arr.view(np.uint64)


def hash_duplicates(
    hashes: ArrayLike,
    max_distance: int,
    *,
    reference: ArrayLike | None = None,
    priority: ArrayLike | None = None,
    valid: ArrayLike | None = None,
) -> NDArray[np.bool_]:
    """(N,) True for each candidate to pass over as a copy; see the module docstring.

    ``hashes``: (N,) the candidates' hashes (uint64, or int64 holding the same bits); ``valid`` (N,) False for
    candidates without a hash (never marked, never marking); ``reference``: hashes of taken items; ``priority``
    (N,) decides which copy of a group survives (highest; NaN lowest; ties to the lower index).

    Raises:
        InvalidOptionError: ``max_distance`` is not an integer in [0, 16].
        InvalidScoresError: arrays of the wrong shape or type.
    """
    if not is_int(max_distance) or not 0 <= max_distance <= MAX_HASH_DISTANCE:
        raise InvalidOptionError(f"hash distance must be an integer in [0, {MAX_HASH_DISTANCE}], got {max_distance!r}")
    h = _hashes(hashes, "hashes")
    n = len(h)
    ok = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    ref = np.zeros(0, dtype=np.uint64) if reference is None else _hashes(reference, "reference hashes")
    prio = np.zeros(n) if priority is None else np.asarray(priority, dtype=np.float64)
    if ok.shape != (n,) or prio.shape != (n,):
        raise InvalidScoresError(f"valid and priority must have one entry per hash ({n})")
    out = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        return out
    nodes, inverse = np.unique(h[rows], return_inverse=True)  # identical hashes collapse into one node
    ref_nodes = np.setdiff1d(np.unique(ref), nodes)
    all_nodes = np.concatenate([nodes, ref_nodes])
    is_ref = np.ones(len(all_nodes), dtype=bool)  # a reference hash (some are candidates' hashes too)
    is_ref[: len(nodes)] = np.isin(nodes, ref)
    taken = is_ref.copy()  # a node within reach of a reference or of a kept candidate
    first, second = _near_pairs(all_nodes, max_distance)
    # candidate nodes near a reference are taken from the start
    taken[first[is_ref[second]]] = True
    taken[second[is_ref[first]]] = True
    # adjacency between candidate nodes (CSR), for the greedy below
    inner = (first < len(nodes)) & (second < len(nodes))
    a = np.concatenate([first[inner], second[inner]])
    b = np.concatenate([second[inner], first[inner]])
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(len(nodes) + 1))
    rank = np.lexsort((rows, -np.nan_to_num(prio[rows], nan=-np.inf)))  # the best candidate first
    for r in rank.tolist():
        node = int(inverse[r])
        if taken[node]:
            out[rows[r]] = True
            continue
        taken[node] = True  # its identical copies are marked from now on
        taken[b[starts[node] : starts[node + 1]]] = True
    return out


def _near_pairs(nodes: NDArray[np.uint64], max_distance: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """All pairs (i < j) of distinct ``nodes`` within ``max_distance`` bits, by band buckets."""
    if max_distance == 0 or len(nodes) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bands = max_distance + 1
    edges = np.linspace(0, 64, bands + 1).round().astype(int)
    found: list[NDArray[np.int64]] = []
    for lo, hi in itertools.pairwise(edges.tolist()):
        mask = np.uint64((1 << (hi - lo)) - 1)
        value = (nodes >> np.uint64(lo)) & mask
        order = np.argsort(value, kind="stable")
        sorted_values = value[order]
        cuts = np.flatnonzero(np.diff(sorted_values)) + 1
        for group in np.split(order, cuts):
            if len(group) < 2:
                continue
            block = max(1, _PAIR_BLOCK // len(group))
            for start in range(0, len(group), block):
                rows = group[start : start + block]
                dist = hamming(nodes[rows][:, None], nodes[group][None, :])
                i, j = np.nonzero(dist <= max_distance)
                left, right = rows[i], group[j]
                keep = left < right
                found.append(left[keep].astype(np.int64) * len(nodes) + right[keep].astype(np.int64))
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return codes // len(nodes), codes % len(nodes)
