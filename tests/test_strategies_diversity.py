"""k-center, hybrid, k-means, class balance and the index: brute-force references and properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    ClassBalanced,
    HybridStrategy,
    InvalidScoresError,
    KCenterStrategy,
    KMeansStrategy,
    PoolExhaustedError,
    PoolView,
    UncertaintyStrategy,
    coarse_clusters,
    covering_radius,
    get_strategy,
    greedy_select,
    kmeans,
    make_index,
    min_cosine_distance,
)
from strategies.index import FaissIndex, TorchIndex


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_greedy(x, k, ref=None, prio=None, w=1.0, tau=0.0):
    """The definition, written as plainly as possible: O(n·k) with a full pass per pick."""
    n = len(x)
    p = np.ones(n) if prio is None else np.asarray(prio, dtype=np.float64)
    alive = ~np.isnan(p)
    p = np.where(alive, p, 0.0)
    d = np.full(n, 2.0, dtype=np.float32)
    if ref is not None and len(ref):
        d = np.minimum(d, np.maximum((1 - x @ ref.T).min(axis=1), 0))
    out: list[int] = []
    if (ref is None or not len(ref)) and w > 0:
        first_key = -(x @ x[alive].sum(axis=0)) if w == 1 else p
        first = int(np.argmax(np.where(alive, first_key, -np.inf)))
        out.append(first)
        alive[first] = False
        d = np.minimum(d, np.maximum(1 - x @ x[first], 0))
    while len(out) < k:
        key = np.where(alive, (p ** (1 - w) if w < 1 else 1.0) * (d.astype(np.float64) ** w if w > 0 else 1.0), -np.inf)
        i = int(np.argmax(key))
        if key[i] == -np.inf:
            break
        if d[i] < tau:
            alive[i] = False
            if w == 1:
                break
            continue
        out.append(i)
        alive[i] = False
        d = np.minimum(d, np.maximum(1 - x @ x[i], 0))
    return out


def brute_keys(x, picked, ref, prio, w):
    """Every row's key after ``picked`` were chosen (float64 throughout)."""
    p = np.where(np.isnan(prio), 0.0, prio)
    cover = [c for c in (ref, x[picked] if picked else None) if c is not None and len(c)]
    d = np.full(len(x), 2.0)
    if cover:
        d = np.minimum(d, np.maximum((1 - x.astype(np.float64) @ np.concatenate(cover).T).min(axis=1), 0))
    return (p ** (1 - w) if w < 1 else 1.0) * (d**w if w > 0 else 1.0)


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(2, 120),
    d=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    data=st.data(),
    w=st.sampled_from([0.0, 0.3, 1.0]),
    tau=st.sampled_from([0.0, 0.2]),
    with_ref=st.booleans(),
    block=st.sampled_from([1, 7, 64, 4096]),
)
def test_greedy_equals_brute_force(n, d, seed, data, w, tau, with_ref, block) -> None:
    rng = np.random.default_rng(seed)
    x = unit(rng, n, d)
    ref = unit(rng, 3, d) if with_ref else None
    prio = rng.random(n)
    prio[rng.random(n) < 0.1] = np.nan
    available = int((~np.isnan(prio)).sum())
    if available == 0:
        return
    k = data.draw(st.integers(1, available))
    got = greedy_select(
        x,
        k,
        priority=prio if w < 1 else np.where(np.isnan(prio), np.nan, 1.0),
        weight=w,
        reference=ref,
        min_distance=tau,
        block_rows=block,
    ).indices.tolist()
    p = prio if w < 1 else np.where(np.isnan(prio), np.nan, 1.0)
    want = brute_greedy(x, k, ref, p, w, tau)
    if got != want:
        # Only a float32 near-tie may break differently (FAISS and numpy sum in different orders): at the first
        # divergence both candidates must have the same key up to rounding; later picks follow from that choice.
        step = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        assert step is not None, (got, want)  # one is a prefix of the other: a real difference, not a tie
        key = brute_keys(x, got[:step], ref, p, w)
        assert abs(key[got[step]] - key[want[step]]) <= 1e-6 * max(1.0, abs(key[want[step]])), (got, want)


@pytest.mark.heavy
@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 80), seed=st.integers(0, 1000))
def test_kcenter_indices_distinct_and_covering_radius_non_increasing(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = unit(rng, n, 6)
    ref = unit(rng, 2, 6)
    pool = PoolView(embeddings=x, reference_embeddings=ref)
    radii = []
    for k in range(1, n + 1, max(1, n // 6)):
        picked = KCenterStrategy().select(pool, k)
        assert len(set(picked.indices.tolist())) == len(picked) == k
        radii.append(covering_radius(x, picked.indices, ref))
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(radii))


def test_kcenter_fills_gaps_instead_of_recovering_labeled_regions() -> None:
    rng = np.random.default_rng(0)
    centers = unit(rng, 4, 16)
    x = np.concatenate([c + rng.normal(scale=0.05, size=(50, 16)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = x[:100]  # clusters 0 and 1 are already labeled
    picked = KCenterStrategy().select(PoolView(embeddings=x, reference_embeddings=labeled), 2)
    assert sorted(int(i) // 50 for i in picked.indices) == [2, 3]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 100), seed=st.integers(0, 1000), data=st.data())
def test_hybrid_with_weight_zero_is_pure_uncertainty(n: int, seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    u = np.round(rng.random(n), 2)  # many ties
    pool = PoolView(uncertainty=u, embeddings=unit(rng, n, 5), reference_embeddings=unit(rng, 2, 5))
    k = data.draw(st.integers(1, n))
    plain = UncertaintyStrategy("margin").select(pool, k)
    for diversify in ("kmeans", "greedy"):
        hybrid = HybridStrategy(weight=0.0, diversify=diversify).select(pool, k)
        assert hybrid.indices.tolist() == plain.indices.tolist()


@pytest.mark.parametrize("diversify", ["kmeans", "greedy"])
def test_hybrid_prefers_diverse_uncertain_items(diversify: str) -> None:
    rng = np.random.default_rng(1)
    base = unit(rng, 1, 16)[0]
    dupes = base + rng.normal(scale=0.01, size=(10, 16))  # ten near-identical, very uncertain images
    others = unit(rng, 30, 16)
    x = np.concatenate([dupes, others]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = np.concatenate([np.full(10, 0.95), rng.uniform(0.6, 0.9, 30)])
    pool = PoolView(uncertainty=u, embeddings=x)
    pure = UncertaintyStrategy("margin").select(pool, 5)
    hybrid = HybridStrategy(weight=0.7, diversify=diversify).select(pool, 5)
    assert all(i < 10 for i in pure.indices)  # uncertainty alone takes the duplicates
    assert sum(int(i) < 10 for i in hybrid.indices) == 1  # the hybrid takes one of them


@pytest.mark.parametrize("diversify", ["kmeans", "greedy"])
def test_hybrid_fills_the_budget_when_its_candidates_are_near_duplicates(diversify: str) -> None:
    rng = np.random.default_rng(4)
    base = unit(rng, 1, 16)[0]
    dupes = base + rng.normal(scale=0.001, size=(30, 16))  # the 30 most uncertain are one image, 30 times
    x = np.concatenate([dupes, unit(rng, 70, 16)]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = np.concatenate([np.full(30, 0.99), rng.uniform(0.1, 0.9, 70)])
    pool = PoolView(uncertainty=u, embeddings=x, min_distance=0.05)
    picked = HybridStrategy(candidates=2, diversify=diversify).select(pool, 6)  # M = 12: all duplicates
    assert len(picked.indices) == 6 and len(set(picked.indices.tolist())) == 6
    assert sum(int(i) < 30 for i in picked.indices) == 1
    chosen = x[picked.indices]
    gaps = 1.0 - chosen @ chosen.T
    assert gaps[~np.eye(6, dtype=bool)].min() >= 0.05


def test_kmeans_takes_one_item_per_cluster() -> None:
    rng = np.random.default_rng(2)
    centers = unit(rng, 6, 32)
    x = np.concatenate([c + rng.normal(scale=0.02, size=(40, 32)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.random(len(x))
    picked = KMeansStrategy().select(PoolView(uncertainty=u, embeddings=x), 6)
    assert sorted(int(i) // 40 for i in picked.indices) == list(range(6))
    for i in picked.indices:  # the most uncertain member of its cluster
        cluster = int(i) // 40
        assert u[i] == u[cluster * 40 : cluster * 40 + 40].max()
    centroid_pick = KMeansStrategy(pick="centroid").select(PoolView(uncertainty=u, embeddings=x), 6)
    assert sorted(int(i) // 40 for i in centroid_pick.indices) == list(range(6))


def test_diverse_strategies_return_coarse_clusters() -> None:
    rng = np.random.default_rng(3)
    pool = PoolView(uncertainty=rng.random(200), embeddings=unit(rng, 200, 8))
    for name in ("kcenter", "kmeans", "hybrid"):
        picked = get_strategy(name).select(pool, 25)
        assert picked.clusters is not None and len(picked.clusters) == 25
        assert 1 < len(set(picked.clusters.tolist())) <= 25


def test_class_balance_feeds_rare_classes() -> None:
    n = 100
    classes = np.zeros((n, 3), dtype=bool)
    classes[:90, 0] = True  # common class, and the most uncertain
    classes[90:97, 1] = True
    classes[97:, 2] = True
    u = np.concatenate([np.linspace(0.99, 0.5, 90), np.linspace(0.3, 0.2, 10)])
    pool = PoolView(uncertainty=u, classes=classes)
    plain = UncertaintyStrategy("entropy").select(pool, 9)
    assert set(np.flatnonzero(classes[plain.indices].any(axis=0))) == {0}
    balanced = ClassBalanced(UncertaintyStrategy("entropy")).select(pool, 9)
    per_class = classes[balanced.indices].sum(axis=0)
    assert per_class.tolist() == [3, 3, 3]
    assert len(set(balanced.indices.tolist())) == 9
    # when a class runs out, the rest of the budget still gets filled
    short = ClassBalanced(UncertaintyStrategy("entropy")).select(pool, 20)
    assert len(short) == 20 and classes[short.indices, 2].sum() == 3


def test_index_implementations_agree() -> None:
    rng = np.random.default_rng(4)
    base, queries = unit(rng, 500, 24), unit(rng, 300, 24)
    faiss_index, torch_index = FaissIndex(24), TorchIndex(24, device="cpu")
    faiss_index.add(base)
    torch_index.add(base)
    fd, fi = faiss_index.nearest(queries, 3)
    td, ti = torch_index.nearest(queries, 3)
    np.testing.assert_array_equal(fi, ti)
    np.testing.assert_allclose(fd, td, atol=1e-5)
    brute = 1 - queries @ base.T
    np.testing.assert_allclose(fd[:, 0], brute.min(axis=1), atol=1e-5)
    assert make_index(24, "cpu").ntotal == 0
    np.testing.assert_allclose(min_cosine_distance(queries, base), np.maximum(brute.min(axis=1), 0), atol=1e-5)
    assert np.isinf(min_cosine_distance(queries, None)).all()


def test_kmeans_is_seeded() -> None:
    x = unit(np.random.default_rng(5), 300, 8)
    a = kmeans(x, 7, seed=3).assignment
    b = kmeans(x, 7, seed=3).assignment
    np.testing.assert_array_equal(a, b)


def test_greedy_validates_its_inputs() -> None:
    x = unit(np.random.default_rng(6), 10, 4)
    with pytest.raises(PoolExhaustedError):
        greedy_select(x, 11)
    with pytest.raises(ValueError, match="weight"):
        greedy_select(x, 2, weight=1.5)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        greedy_select(bad, 2)


@pytest.mark.heavy
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 80),
    seed=st.integers(0, 1000),
    w=st.sampled_from([0.0, 0.5, 1.0]),
    tau=st.sampled_from([0.0, 0.1]),
    data=st.data(),
)
def test_greedy_picks_do_not_depend_on_row_lengths(n: int, seed: int, w: float, tau: float, data) -> None:
    """greedy_select rescales rows to unit length at its boundary: raw (unnormalised) rows pick what their
    directions pick, and the caller's arrays are left alone."""
    rng = np.random.default_rng(seed)
    x, ref = unit(rng, n, 6), unit(rng, 3, 6)
    prio = rng.random(n)
    k = data.draw(st.integers(1, n))
    raw = x * rng.uniform(0.01, 100.0, size=(n, 1)).astype(np.float32)
    raw_ref = ref * rng.uniform(0.01, 100.0, size=(3, 1)).astype(np.float32)
    kept = raw.copy()
    want = greedy_select(x, k, priority=prio, weight=w, reference=ref, min_distance=tau)
    got = greedy_select(raw, k, priority=prio, weight=w, reference=raw_ref, min_distance=tau)
    assert got.indices.tolist() == want.indices.tolist()
    np.testing.assert_allclose(got.distances, want.distances, atol=1e-5)
    np.testing.assert_array_equal(raw, kept)
    assert covering_radius(raw, got.indices, raw_ref) == pytest.approx(covering_radius(x, want.indices, ref), abs=1e-5)


def test_coarse_clusters_do_not_depend_on_row_lengths() -> None:
    rng = np.random.default_rng(8)
    x = unit(rng, 50, 8)
    raw = x * rng.uniform(0.1, 10.0, size=(50, 1)).astype(np.float32)
    np.testing.assert_array_equal(coarse_clusters(raw, seed=2), coarse_clusters(x, seed=2))


def test_greedy_rejects_infinite_reference() -> None:
    x = unit(np.random.default_rng(9), 10, 4)
    ref = x[:2].copy()
    ref[1, 0] = np.inf
    with pytest.raises(InvalidScoresError, match="reference embeddings row 1 has a non-finite value"):
        greedy_select(x, 2, reference=ref)
