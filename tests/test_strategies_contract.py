"""The contract every registered strategy keeps, the registry, and ``top_k``'s exact ranking.

The contract tests are parametrised over ``strategy_names()``: a strategy added to the registry is covered
without touching this file. The pool carries uncertainty, embeddings and reference embeddings so that any kind
of strategy can run on it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    STRATEGIES,
    UNCERTAINTY_MEASURES,
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    PoolView,
    Selection,
    Strategy,
    StrategyError,
    UnknownStrategyError,
    get_strategy,
    strategy_names,
    top_k,
)

N_ITEMS = 60
DIM = 8


def make_pool(n: int = N_ITEMS, seed: int = 0, excluded: int = 10) -> PoolView:
    """n items: random uncertainty with ``excluded`` of them NaN (at random places), unit embeddings."""
    rng = np.random.default_rng(1234 + n)
    uncertainty = rng.random(n)
    uncertainty[rng.permutation(n)[:excluded]] = np.nan
    embeddings = rng.normal(size=(n, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    reference = rng.normal(size=(5, DIM)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    return PoolView(uncertainty=uncertainty, embeddings=embeddings, reference_embeddings=reference, seed=seed)


def available(pool: PoolView) -> int:
    assert pool.uncertainty is not None
    return int((~np.isnan(pool.uncertainty)).sum())


# --- the contract -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_describes_itself(name: str) -> None:
    strategy = get_strategy(name)
    assert isinstance(strategy, Strategy)
    assert strategy.name == name
    assert strategy.measure is None or strategy.measure in UNCERTAINTY_MEASURES
    assert isinstance(strategy.needs_embeddings, bool)


@pytest.mark.parametrize("budget", [1, 7, 50])
@pytest.mark.parametrize("name", strategy_names())
def test_selection_respects_the_contract(name: str, budget: int) -> None:
    pool = make_pool()
    selection = get_strategy(name).select(pool, budget)
    assert isinstance(selection, Selection)
    indices = selection.indices
    assert indices.dtype == np.int64
    assert selection.scores.dtype == np.float64
    assert len(indices) == budget
    assert len(selection.scores) == len(indices)
    assert selection.clusters is None or len(selection.clusters) == len(indices)
    assert len(set(indices.tolist())) == budget
    assert np.all((indices >= 0) & (indices < N_ITEMS))
    assert pool.uncertainty is not None
    assert not np.isnan(pool.uncertainty[indices]).any()


@pytest.mark.parametrize("name", strategy_names())
def test_selection_is_deterministic_for_a_seed(name: str) -> None:
    first = get_strategy(name).select(make_pool(seed=7), 10)
    second = get_strategy(name).select(make_pool(seed=7), 10)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)


@pytest.mark.parametrize("name", strategy_names())
def test_whole_available_pool_can_be_selected(name: str) -> None:
    pool = make_pool()
    selection = get_strategy(name).select(pool, available(pool))
    assert pool.uncertainty is not None
    assert sorted(selection.indices.tolist()) == np.flatnonzero(~np.isnan(pool.uncertainty)).tolist()


@pytest.mark.parametrize("name", strategy_names())
def test_exhausted_pool_raises(name: str) -> None:
    pool = make_pool()
    with pytest.raises(PoolExhaustedError) as info:
        get_strategy(name).select(pool, available(pool) + 1)
    assert info.value.available == available(pool)
    assert info.value.requested == available(pool) + 1
    assert str(info.value) == f"pool exhausted: {available(pool)} available / {available(pool) + 1} requested"


@pytest.mark.parametrize("name", strategy_names())
def test_empty_pool_raises(name: str) -> None:
    with pytest.raises(EmptyPoolError, match="the pool is empty: nothing to select"):
        get_strategy(name).select(make_pool(n=0, excluded=0), 1)


@pytest.mark.parametrize("name", strategy_names())
def test_fully_excluded_pool_raises_empty(name: str) -> None:
    with pytest.raises(EmptyPoolError, match=r"all 4 items are excluded"):
        get_strategy(name).select(make_pool(n=4, excluded=4), 1)


@pytest.mark.parametrize("budget", [0, -3, 2.5, True, "3"])
@pytest.mark.parametrize("name", strategy_names())
def test_bad_budget_raises(name: str, budget: object) -> None:
    with pytest.raises(InvalidBudgetError):
        get_strategy(name).select(make_pool(), budget)  # type: ignore[arg-type]


# --- the concrete strategies --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNCERTAINTY_MEASURES)
def test_uncertainty_strategy_ranks_by_uncertainty(name: str) -> None:
    pool = make_pool()
    strategy = get_strategy(name)
    assert strategy.measure == name
    assert strategy.needs_embeddings is False
    selection = strategy.select(pool, 5)
    assert pool.uncertainty is not None
    u = pool.uncertainty
    expected = sorted((i for i in range(N_ITEMS) if not math.isnan(u[i])), key=lambda i: (-u[i], i))[:5]
    assert selection.indices.tolist() == expected
    np.testing.assert_array_equal(selection.scores, u[expected])


def test_uncertainty_strategy_needs_uncertainty() -> None:
    with pytest.raises(StrategyError, match=r"fill PoolView.uncertainty with the 'margin' measure"):
        get_strategy("margin").select(PoolView(size=3), 1)


def test_random_strategy_is_seeded_and_ignores_uncertainty_values() -> None:
    random = get_strategy("random")
    assert random.measure is None
    base = make_pool(seed=1)
    picks = random.select(base, 10).indices
    assert not np.array_equal(picks, random.select(make_pool(seed=2), 10).indices)
    assert base.uncertainty is not None
    # Other (non-NaN) uncertainty values do not change a random selection.
    rescored = PoolView(uncertainty=np.where(np.isnan(base.uncertainty), np.nan, 0.5), seed=1)
    np.testing.assert_array_equal(random.select(rescored, 10).indices, picks)


def test_random_strategy_without_uncertainty_uses_size() -> None:
    selection = get_strategy("random").select(PoolView(size=5, seed=3), 5)
    assert sorted(selection.indices.tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(selection.scores) <= 0)  # ranked by draw, highest first


# --- registry -----------------------------------------------------------------------------------------------


def test_registered_names() -> None:
    assert strategy_names() == [
        "entropy",
        "hybrid",
        "kcenter",
        "kmeans",
        "least_confidence",
        "margin",
        "random",
        "ratio",
    ]
    assert set(STRATEGIES) == set(strategy_names())


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        get_strategy("foo")
    assert str(info.value) == (
        "unknown strategy 'foo'; valid: entropy, hybrid, kcenter, kmeans, least_confidence, margin, random, ratio"
    )
    assert info.value.name == "foo"
    assert info.value.valid == tuple(strategy_names())


def test_hyphen_spelling_is_accepted() -> None:
    assert get_strategy("least-confidence").name == "least_confidence"


def test_unknown_option_is_named() -> None:
    with pytest.raises(InvalidOptionError, match=r"strategy 'entropy' has no option 'temperature'"):
        get_strategy("entropy", temperature=2.0)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        STRATEGIES["mine"] = STRATEGIES["random"]  # type: ignore[index]


# --- PoolView and Selection ---------------------------------------------------------------------------------


def test_pool_view_rejects_disagreeing_lengths() -> None:
    with pytest.raises(InvalidScoresError, match=r"uncertainty=3, embeddings=4"):
        PoolView(uncertainty=np.zeros(3), embeddings=np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(InvalidScoresError, match=r"size=2, uncertainty=3"):
        PoolView(uncertainty=np.zeros(3), size=2)
    with pytest.raises(InvalidScoresError, match=r"reference_embeddings have dimension 3"):
        PoolView(
            embeddings=np.zeros((4, 2), dtype=np.float32),
            reference_embeddings=np.zeros((1, 3), dtype=np.float32),
        )
    with pytest.raises(InvalidOptionError, match="needs uncertainty, embeddings or size"):
        PoolView()
    with pytest.raises(InvalidOptionError, match="seed"):
        PoolView(size=3, seed=-1)


def test_pool_view_length() -> None:
    assert len(PoolView(size=4)) == 4
    assert len(PoolView(embeddings=np.zeros((6, 2), dtype=np.float32))) == 6
    assert len(make_pool(n=9)) == 9


def test_selection_rejects_misaligned_arrays() -> None:
    with pytest.raises(InvalidScoresError):
        Selection(indices=np.array([0, 1], dtype=np.int64), scores=np.array([0.5]))


# --- top_k --------------------------------------------------------------------------------------------------


def test_top_k_ranks_and_breaks_ties_by_lower_index() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.5, 0.1])
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 2).tolist() == [1, 3]
    assert top_k(scores, 3).tolist() == [1, 3, 2]  # the tie at the k-th value goes to index 2, not 4
    assert top_k(scores, 6).tolist() == [1, 3, 2, 4, 0, 5]


def test_top_k_all_equal_picks_the_first() -> None:
    assert top_k(np.ones(1000), 3).tolist() == [0, 1, 2]


def test_top_k_skips_nan_and_masked_items() -> None:
    scores = np.array([0.9, np.nan, 0.8, 0.7, 0.6])
    mask = np.array([True, True, False, True, True])
    assert top_k(scores, 3).tolist() == [0, 2, 3]
    assert top_k(scores, 3, candidates=mask).tolist() == [0, 3, 4]
    with pytest.raises(PoolExhaustedError, match="pool exhausted: 3 available / 4 requested"):
        top_k(scores, 4, candidates=mask)


def test_top_k_errors() -> None:
    with pytest.raises(EmptyPoolError):
        top_k(np.array([]), 1)
    with pytest.raises(EmptyPoolError):
        top_k(np.array([0.5, 0.5]), 1, candidates=np.array([False, False]))
    with pytest.raises(InvalidBudgetError, match="budget must be an integer >= 1, got 0"):
        top_k(np.array([0.5]), 0)
    with pytest.raises(InvalidScoresError, match="boolean mask of shape"):
        top_k(np.array([0.5, 0.4]), 1, candidates=np.array([1, 0]))
    with pytest.raises(InvalidScoresError, match="1-D"):
        top_k(np.zeros((2, 2)), 1)
    assert top_k(np.array([0.5, 0.4]), np.int64(1)).tolist() == [0]  # type: ignore[arg-type]


def test_top_k_handles_infinities() -> None:
    assert top_k(np.array([0.0, np.inf, -np.inf, 1.0]), 4).tolist() == [1, 3, 0, 2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, math.nan]), min_size=1, max_size=60),
    st.data(),
)
def test_top_k_matches_brute_force_with_many_ties(values: list[float], data: st.DataObject) -> None:
    s = np.array(values)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values))))
    use_mask = data.draw(st.booleans())
    ok = [i for i in range(len(values)) if not math.isnan(values[i]) and (mask[i] or not use_mask)]
    if not ok:
        with pytest.raises(EmptyPoolError):
            top_k(s, 1, candidates=mask if use_mask else None)
        return
    k = data.draw(st.integers(1, len(ok)))
    expected = sorted(ok, key=lambda i: (-values[i], i))[:k]
    assert top_k(s, k, candidates=mask if use_mask else None).tolist() == expected


@pytest.mark.parametrize("name", strategy_names())
def test_near_duplicates_are_never_selected(name: str) -> None:
    """With min_distance, no two selected items and no selected/reference pair are closer than it."""
    from dataclasses import replace

    base = make_pool(excluded=0)
    assert base.embeddings is not None and base.reference_embeddings is not None
    # plant near-copies of pool items and of a reference item
    rng = np.random.default_rng(7)
    copies = base.embeddings[:15] + rng.normal(scale=0.01, size=(15, DIM)).astype(np.float32)
    ref_copies = base.reference_embeddings[:3] + rng.normal(scale=0.01, size=(3, DIM)).astype(np.float32)
    emb = np.concatenate([base.embeddings, copies, ref_copies])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert base.uncertainty is not None
    unc = np.concatenate([base.uncertainty, np.full(18, 0.99)])  # the copies look most uncertain
    pool = replace(base, uncertainty=unc, embeddings=emb.astype(np.float32), min_distance=0.05)
    picked = get_strategy(name).select(pool, 30)
    chosen = emb[picked.indices]
    sims = chosen @ chosen.T
    np.fill_diagonal(sims, -1)
    assert 1 - sims.max() >= 0.05 - 1e-6, "two selected items are near-duplicates"
    assert 1 - (chosen @ base.reference_embeddings.T).max() >= 0.05 - 1e-6, "a selected item duplicates a reference"
    assert len(set(picked.indices.tolist())) == len(picked) <= 30
