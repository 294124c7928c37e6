"""BADGE, Cluster-Margin and TypiClust: each rule as published, on small pools whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import (
    PoolView,
    get_strategy,
    gradient_embeddings,
    round_robin,
    typicality,
    uncertainty_scores,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(centers: int, per: int, dim: int = 6, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    middle = _unit(rng.normal(size=(centers, dim)))
    x = np.concatenate([middle[c] + rng.normal(scale=spread, size=(per, dim)) for c in range(centers)])
    return _unit(x), np.repeat(np.arange(centers), per)


# --- BADGE ----------------------------------------------------------------------------------------------------


def test_badge_distances_are_those_of_the_explicit_gradient_embeddings() -> None:
    """The implicit k-means++ (never building the N x C·D matrix) draws with the exact gradient-space distances:
    each pick's score equals its squared distance to the nearest earlier pick, computed from the explicit matrix."""
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(40, 5)))
    logits = rng.normal(scale=2.0, size=(40, 4))
    p = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    pool = PoolView(uncertainty=np.zeros(40), embeddings=x, probs=p, seed=5)
    picked = get_strategy("badge").select(pool, 8)
    g = gradient_embeddings(p, x)
    norms = (g * g).sum(axis=1)
    assert picked.indices[0] == int(np.argmax(norms))  # first center: the largest gradient
    np.testing.assert_allclose(picked.scores[0], norms[picked.indices[0]], rtol=1e-5)
    for k in range(1, 8):
        earlier = g[picked.indices[:k]]
        d2 = ((g[picked.indices[k]] - earlier) ** 2).sum(axis=1).min()
        np.testing.assert_allclose(picked.scores[k], d2, rtol=1e-4, atol=1e-6)


def test_badge_prefers_uncertain_items_and_spreads_them() -> None:
    """Confident items have zero gradient: they all sit at the origin of gradient space, so k-means++ takes at most
    one of them (after that their distance to a center is 0); the rest are uncertain items from different blobs."""
    x, blob = _blobs(4, 25)
    p = np.full((100, 3), 0.0, dtype=np.float32)
    p[:, 0] = 1.0  # confident
    uncertain = np.flatnonzero(np.arange(100) % 25 < 5)  # five per blob
    p[uncertain] = [0.4, 0.35, 0.25]
    pool = PoolView(uncertainty=np.zeros(100), embeddings=x, probs=p, seed=1)
    picked = get_strategy("badge").select(pool, 5)
    chosen_uncertain = [i for i in picked.indices.tolist() if i in set(uncertain.tolist())]
    assert len(chosen_uncertain) >= 4
    assert len(set(blob[chosen_uncertain].tolist())) == len(chosen_uncertain), "two uncertain picks share a blob"


def test_badge_needs_probabilities() -> None:
    x, _ = _blobs(2, 5)
    with pytest.raises(Exception, match=r"class probabilities"):
        get_strategy("badge").select(PoolView(uncertainty=np.zeros(10), embeddings=x), 2)


# --- Cluster-Margin -------------------------------------------------------------------------------------------


def test_round_robin_visits_the_smallest_cluster_first() -> None:
    assignment = np.array([0, 0, 0, 1, 2, 2])
    # sizes: 0 -> 3, 1 -> 1, 2 -> 2: clusters in order 1, 2, 0; members in position order
    order = round_robin(assignment, np.arange(6))
    assert order.tolist() == [3, 4, 0, 5, 1, 2]


def test_cluster_margin_takes_only_low_margin_candidates_round_robin() -> None:
    x, blob = _blobs(3, 30)
    rng = np.random.default_rng(0)
    top = rng.random((90, 3)) + np.array([2.0, 0.0, 0.0])
    p = top / top.sum(axis=1, keepdims=True)
    margin_u = uncertainty_scores(p, "margin")
    pool = PoolView(uncertainty=margin_u, embeddings=x, seed=2)
    budget = 6
    picked = get_strategy("cluster_margin", candidates=3, clusters=0.5).select(pool, budget)
    allowed = np.argsort(-margin_u, kind="stable")[: 3 * budget]
    assert set(picked.indices.tolist()) <= set(allowed.tolist()), "picked outside the margin-filtered candidates"
    assert len(picked) == budget and len(set(picked.indices.tolist())) == budget
    # three k-means clusters over the candidates, two passes of the round-robin: two items of each region
    counts = np.bincount(blob[picked.indices], minlength=3)
    assert counts.max() - counts.min() <= 1


# --- TypiClust ------------------------------------------------------------------------------------------------


def test_typicality_is_highest_in_the_dense_middle() -> None:
    x, _ = _blobs(1, 30, spread=0.05)
    outlier = _unit(np.ones((1, 6)) * np.array([1, -1, 1, -1, 1, -1]))
    t = typicality(np.concatenate([x, outlier]), neighbors=5)
    assert int(np.argmin(t)) == 30


def test_typiclust_takes_one_typical_item_per_uncovered_cluster() -> None:
    x, blob = _blobs(3, 30, spread=0.05, seed=4)
    rng = np.random.default_rng(9)
    outliers = _unit(rng.normal(size=(3, 6)))
    xs = np.concatenate([x, outliers])
    pool = PoolView(uncertainty=np.zeros(len(xs)), embeddings=xs, seed=0)
    picked = get_strategy("typiclust", neighbors=5).select(pool, 3)
    assert picked.indices.max() < 90, "an outlier was picked as typical"
    assert sorted(blob[picked.indices].tolist()) == [0, 1, 2]
    # labeled items in blob 0 cover it: two new picks come from blobs 1 and 2
    covered = PoolView(uncertainty=np.zeros(len(xs)), embeddings=xs, reference_embeddings=x[:3], seed=0)
    again = get_strategy("typiclust", neighbors=5).select(covered, 2)
    assert sorted(blob[again.indices].tolist()) == [1, 2]


def test_typiclust_ignores_uncertainty_values() -> None:
    x, _ = _blobs(3, 10)
    a = get_strategy("typiclust").select(PoolView(uncertainty=np.zeros(30), embeddings=x), 3)
    b = get_strategy("typiclust").select(PoolView(uncertainty=np.linspace(0, 1, 30), embeddings=x), 3)
    np.testing.assert_array_equal(a.indices, b.indices)


# --- through `curate select` ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["badge", "cluster_margin", "typiclust"])
def test_select_runs_each_new_strategy_on_stored_outputs(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    """The orchestrator gives each what it reads (BADGE: the stored probabilities) and records its name."""
    import json

    from typer.testing import CliRunner

    from cli import app
    from curation.devtools.synthetic import make_pool

    make_pool(tmp_path / "pool", n=16, size=48, seed=4)
    args = ["select", "--no-push", "--json", "--pool", str(tmp_path / "pool"), "--model", "yolov8n-cls.yaml"]
    args += ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--budget", "5", "--strategy", name, "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["strategy"] == name and len(data["items"]) == 5
    assert len({r["item_id"] for r in data["items"]}) == 5


@pytest.mark.slow
def test_badge_on_a_detector_says_it_needs_a_classifier(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cli import app
    from curation.devtools.synthetic import make_pool

    make_pool(tmp_path / "pool", n=4, size=64, seed=4)
    args = ["select", "--no-push", "--pool", str(tmp_path / "pool"), "--model", "yolov8n.yaml"]
    args += ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--budget", "2", "--strategy", "badge", "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.stderr
    assert "needs class probabilities" in result.stderr and "detect" in result.stderr
