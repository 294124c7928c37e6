"""The hybrid's centroid pick and ``cold_hybrid``'s switch from it to the most-uncertain pick."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import ColdHybridStrategy, HybridStrategy, InvalidOptionError, PoolView, get_strategy

DIM = 16
GROUP = 20


def outlier_pool(n_reference: int, n_classes: int = 2, seed: int = 0) -> tuple[PoolView, set[int], set[int]]:
    """Two far-apart groups of GROUP items; in each, one outlier (farthest from its group's centre) is the most
    uncertain item and one item sits on the centre. Returns the pool, the outliers and the central items."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[:2] * 10.0
    rows, u, outliers, central = [], [], set(), set()
    for g, centre in enumerate(centres):
        spread = rng.normal(scale=0.3, size=(GROUP, DIM)).astype(np.float32)
        spread[0] = 0.0  # on the centre
        spread[1] = 0.0
        spread[1, 2 + g] = 2.5  # the outlier: farther out than any other member
        rows.append(centre + spread)
        group_u = rng.uniform(0.1, 0.5, GROUP)
        group_u[1] = 0.99
        u.append(group_u)
        outliers.add(g * GROUP + 1)
        central.add(g * GROUP)
    x = np.concatenate(rows)
    classes = np.zeros((len(x), n_classes), dtype=bool)
    classes[:, 0] = True
    reference = rng.normal(size=(n_reference, DIM)).astype(np.float32) if n_reference else None
    pool = PoolView(
        uncertainty=np.concatenate(u), embeddings=x, reference_embeddings=reference, classes=classes, seed=seed
    )
    return pool, outliers, central


def test_hybrid_uncertain_pick_takes_the_outliers_centroid_pick_the_centres() -> None:
    pool, outliers, central = outlier_pool(0)
    uncertain = HybridStrategy(candidates=20).select(pool, 2)
    centroid = HybridStrategy(candidates=20, pick="centroid").select(pool, 2)
    assert set(uncertain.indices.tolist()) == outliers
    # one item per group, each the member nearest its group's centroid: the one on the centre
    assert set(centroid.indices.tolist()) == central
    assert centroid.scores.tolist() == pool.uncertainty[centroid.indices].tolist()  # scores are uncertainties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cold_hybrid_is_the_centroid_pick_below_per_class_labels_per_class_then_the_uncertain_pick(seed: int) -> None:
    strategy = ColdHybridStrategy(per_class=3, candidates=20, cold_candidates=20)
    # 2 classes x 3 per class = 6 labeled items: 5 is cold, 6 is warm
    cold_pool, outliers, central = outlier_pool(5, seed=seed)
    warm_pool, _, _ = outlier_pool(6, seed=seed)
    cold, warm = strategy.select(cold_pool, 2), strategy.select(warm_pool, 2)
    assert strategy.is_cold(cold_pool) and not strategy.is_cold(warm_pool)
    assert cold.indices.tolist() == HybridStrategy(candidates=20, pick="centroid").select(cold_pool, 2).indices.tolist()
    assert warm.indices.tolist() == HybridStrategy(candidates=20).select(warm_pool, 2).indices.tolist()
    assert set(cold.indices.tolist()) == central and set(warm.indices.tolist()) == outliers


def test_cold_hybrid_threshold_scales_with_the_number_of_classes() -> None:
    strategy = get_strategy("cold_hybrid", per_class=3)
    assert isinstance(strategy, ColdHybridStrategy)
    assert not strategy.is_cold(outlier_pool(6, n_classes=2)[0])
    assert strategy.is_cold(outlier_pool(6, n_classes=3)[0])  # 9 needed with three classes
    assert not get_strategy("cold_hybrid", per_class=0).is_cold(outlier_pool(0)[0])  # type: ignore[attr-defined]


def test_cold_hybrid_needs_the_predicted_classes() -> None:
    pool, _, _ = outlier_pool(0)
    bare = PoolView(uncertainty=pool.uncertainty, embeddings=pool.embeddings)
    with pytest.raises(InvalidOptionError, match="needs the predicted classes"):
        ColdHybridStrategy().select(bare, 2)
