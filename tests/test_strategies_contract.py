"""The contract every strategy keeps, with every option, plus the registry and ``top_k``'s exact ranking.

The contract runs over ``CASES``: every registered strategy, every constructor option of each (with a value other
than its default), and ``ClassBalanced`` around each of them. ``test_every_strategy_and_option_has_a_case``
fails when a strategy is registered (or a ``StrategyBase`` subclass is written) without a case here, or when a
constructor gains an option that no case sets. The pool carries uncertainty, embeddings, reference embeddings and
classes so that any kind of strategy can run on it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from strategies import (
    STRATEGIES,
    UNCERTAINTY_MEASURES,
    ClassBalanced,
    EmptyPoolError,
    InvalidBudgetError,
    InvalidOptionError,
    InvalidScoresError,
    PoolExhaustedError,
    PoolView,
    Selection,
    Strategy,
    StrategyBase,
    StrategyError,
    UnknownStrategyError,
    get_strategy,
    strategy_names,
    top_k,
)
from strategies.cluster_margin import CLUSTER_MARGIN_PICKS
from strategies.hybrid import DIVERSIFY_MODES, HYBRID_PICKS
from strategies.kmeans_sampling import PICK_MODES

N_ITEMS = 60
DIM = 8
N_CLASSES = 3

# Options of each registered strategy: together, the cases set every option to a value other than its default,
# and every mode of an option that names one.
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "least_confidence": [{}],
    "margin": [{}],
    "entropy": [{}],
    "ratio": [{}],
    "random": [{}],
    "kcenter": [{}],
    "kmeans": [
        {},
        {"measure": "entropy"},
        {"clusters": 2.5},
        {"pick": "centroid"},
        {"measure": "least-confidence", "clusters": 1.5, "pick": "centroid"},
    ],
    "hybrid": [
        {},
        {"measure": "ratio"},
        {"candidates": 1},
        {"candidates": 3.5},
        {"weight": 0.0},
        {"weight": 1.0},
        {"diversify": "greedy"},
        {"diversify": "greedy", "weight": 0.3, "candidates": 2},
        {"diversify": "greedy", "weight": 0.0},
        {"pick": "centroid"},
        {"pick": "centroid", "candidates": 2, "measure": "entropy"},
    ],
    "badge": [{}],
    "cluster_margin": [
        {},
        {"candidates": 1},
        {"candidates": 3.5, "clusters": 0.5},
        {"clusters": 2.0},
        {"pick": "uncertain"},
    ],
    "typiclust": [{}, {"neighbors": 3}, {"max_clusters": 4}],
    # the contract pool has 5 reference items and 3 classes: per_class 1 is warm, the default (10) cold
    "cold_hybrid": [
        {},
        {"per_class": 1},
        {"per_class": 0, "candidates": 1.5},
        {"cold_candidates": 2, "measure": "entropy"},
    ],
}
# ClassBalanced around every registered strategy (default options), and its own option.
BALANCED: list[tuple[str, dict[str, Any]]] = [
    *[(name, {}) for name in OPTIONS],
    ("hybrid", {"oversample": 1.0}),
    ("kcenter", {"oversample": 5}),
    ("random", {"oversample": 1.5}),
    ("badge", {"oversample": 1.0}),
    ("cold_hybrid", {"oversample": 1.0}),
]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], Strategy]
    name: str  # the built strategy's name


def _case_id(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f"[{k}={v}]" for k, v in options.items())


CASES: list[Case] = [
    *[
        Case(_case_id(name, options), lambda name=name, options=options: get_strategy(name, **options), name)
        for name, cases in OPTIONS.items()
        for options in cases
    ],
    *[
        Case(
            "balance/" + _case_id(name, options),
            lambda name=name, options=options: ClassBalanced(get_strategy(name), **options),
            f"{name}+balance",
        )
        for name, options in BALANCED
    ],
]
each_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def make_pool(n: int = N_ITEMS, seed: int = 0, excluded: int = 10) -> PoolView:
    """n items: random uncertainty with ``excluded`` of them NaN (at random places), unit embeddings, and
    predicted classes (one common, two rare, some items with none)."""
    rng = np.random.default_rng(1234 + n)
    uncertainty = rng.random(n)
    uncertainty[rng.permutation(n)[:excluded]] = np.nan
    embeddings = rng.normal(size=(n, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    reference = rng.normal(size=(5, DIM)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    classes = rng.random((n, N_CLASSES)) < np.array([0.8, 0.1, 0.1])
    logits = rng.normal(scale=2.0, size=(n, N_CLASSES))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return PoolView(
        uncertainty=uncertainty,
        embeddings=embeddings,
        reference_embeddings=reference,
        seed=seed,
        classes=classes,
        probs=probs.astype(np.float32),
    )


def available(pool: PoolView) -> int:
    assert pool.uncertainty is not None
    return int((~np.isnan(pool.uncertainty)).sum())


# --- every strategy and option has a case -------------------------------------------------------------------


def _options(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name: p for p in inspect.signature(factory).parameters.values() if p.kind in kinds}


def _strategy_classes() -> set[type]:
    """Every concrete StrategyBase subclass defined anywhere in the package."""
    for info in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"strategies.{info.name}")
    found: set[type] = set()
    todo = list(StrategyBase.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("strategies.") and not inspect.isabstract(cls):
            found.add(cls)
    return found


def test_every_strategy_and_option_has_a_case() -> None:
    assert set(OPTIONS) == set(STRATEGIES), "a registered strategy has no contract case in OPTIONS"
    for name, factory in STRATEGIES.items():
        for option, param in _options(factory).items():
            values = [case[option] for case in OPTIONS[name] if option in case]
            assert any(v != param.default for v in values), f"option {option!r} of {name!r} has no contract case"
    for option, param in _options(ClassBalanced).items():
        if option != "base":
            assert any(o.get(option, param.default) != param.default for _, o in BALANCED), (
                f"ClassBalanced option {option!r} has no contract case"
            )
    assert {name for name, _ in BALANCED} == set(STRATEGIES), "ClassBalanced must wrap every registered strategy"
    for name, option, modes in [
        ("kmeans", "pick", PICK_MODES),
        ("hybrid", "diversify", DIVERSIFY_MODES),
        ("hybrid", "pick", HYBRID_PICKS),
        ("cluster_margin", "pick", CLUSTER_MARGIN_PICKS),
    ]:
        default = _options(STRATEGIES[name])[option].default
        missing_modes = set(modes) - {case.get(option, default) for case in OPTIONS[name]}
        assert not missing_modes, f"{name} option {option!r}: modes without a contract case: {missing_modes}"
    built = {type(case.build()) for case in CASES}
    missing = sorted(cls.__name__ for cls in _strategy_classes() - built)
    assert not missing, f"strategy classes without a contract case: {missing}"


# --- the contract -------------------------------------------------------------------------------------------


@each_case
def test_strategy_describes_itself(case: Case) -> None:
    strategy = case.build()
    assert isinstance(strategy, Strategy)
    assert isinstance(strategy, StrategyBase)  # validates through the template
    assert strategy.name == case.name
    assert strategy.measure is None or strategy.measure in UNCERTAINTY_MEASURES
    assert isinstance(strategy.needs_embeddings, bool)


@pytest.mark.parametrize("budget", [1, 7, 50])
@each_case
def test_selection_respects_the_contract(case: Case, budget: int) -> None:
    pool = make_pool()
    selection = case.build().select(pool, budget)
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


@each_case
def test_selection_is_deterministic_for_a_seed(case: Case) -> None:
    first = case.build().select(make_pool(seed=7), 10)
    second = case.build().select(make_pool(seed=7), 10)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)
    if first.clusters is not None:
        np.testing.assert_array_equal(first.clusters, second.clusters)


@each_case
def test_whole_available_pool_can_be_selected(case: Case) -> None:
    pool = make_pool()
    selection = case.build().select(pool, available(pool))
    assert pool.uncertainty is not None
    assert sorted(selection.indices.tolist()) == np.flatnonzero(~np.isnan(pool.uncertainty)).tolist()


@each_case
def test_exhausted_pool_raises(case: Case) -> None:
    pool = make_pool()
    with pytest.raises(PoolExhaustedError) as info:
        case.build().select(pool, available(pool) + 1)
    assert info.value.available == available(pool)
    assert info.value.requested == available(pool) + 1
    assert str(info.value) == f"pool exhausted: {available(pool)} available / {available(pool) + 1} requested"


@each_case
def test_empty_pool_raises(case: Case) -> None:
    with pytest.raises(EmptyPoolError, match="the pool is empty: nothing to select"):
        case.build().select(make_pool(n=0, excluded=0), 1)


@each_case
def test_fully_excluded_pool_raises_empty(case: Case) -> None:
    with pytest.raises(EmptyPoolError, match=r"all 4 items are excluded"):
        case.build().select(make_pool(n=4, excluded=4), 1)


@pytest.mark.parametrize("budget", [0, -3, 2.5, True, "3"])
@each_case
def test_bad_budget_raises(case: Case, budget: object) -> None:
    with pytest.raises(InvalidBudgetError):
        case.build().select(make_pool(), budget)  # type: ignore[arg-type]


@each_case
def test_near_duplicates_are_never_selected(case: Case) -> None:
    """With min_distance, no two selected items and no selected/reference pair are closer than it."""
    base = make_pool(excluded=0)
    assert base.embeddings is not None and base.reference_embeddings is not None and base.classes is not None
    # plant near-copies of pool items and of a reference item
    rng = np.random.default_rng(7)
    copies = base.embeddings[:15] + rng.normal(scale=0.01, size=(15, DIM)).astype(np.float32)
    ref_copies = base.reference_embeddings[:3] + rng.normal(scale=0.01, size=(3, DIM)).astype(np.float32)
    emb = np.concatenate([base.embeddings, copies, ref_copies])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert base.uncertainty is not None
    unc = np.concatenate([base.uncertainty, np.full(18, 0.99)])  # the copies look most uncertain
    classes = np.concatenate([base.classes, base.classes[:15], base.classes[:3]])
    assert base.probs is not None
    probs = np.concatenate([base.probs, base.probs[:15], base.probs[:3]])
    pool = replace(
        base, uncertainty=unc, embeddings=emb.astype(np.float32), min_distance=0.05, classes=classes, probs=probs
    )
    picked = case.build().select(pool, 30)
    chosen = emb[picked.indices]
    sims = chosen @ chosen.T
    np.fill_diagonal(sims, -1)
    assert 1 - sims.max() >= 0.05 - 1e-6, "two selected items are near-duplicates"
    assert 1 - (chosen @ base.reference_embeddings.T).max() >= 0.05 - 1e-6, "a selected item duplicates a reference"
    assert len(set(picked.indices.tolist())) == len(picked) <= 30


@pytest.mark.parametrize("min_distance", [0.0, 0.05])
@each_case
def test_rescaled_embeddings_give_the_same_selection(case: Case, min_distance: float) -> None:
    """Distances are cosine distances: the length of an embedding row (raw model features, a rescaled row)
    must never change what is picked."""
    pool = replace(make_pool(), min_distance=min_distance)
    assert pool.embeddings is not None and pool.reference_embeddings is not None
    rng = np.random.default_rng(11)
    scaled = pool.embeddings * rng.uniform(0.05, 20.0, size=(N_ITEMS, 1)).astype(np.float32)
    scaled_ref = pool.reference_embeddings * rng.uniform(0.05, 20.0, size=(5, 1)).astype(np.float32)
    before = scaled.copy()
    rescaled = replace(pool, embeddings=scaled, reference_embeddings=scaled_ref)
    want, got = case.build().select(pool, 20), case.build().select(rescaled, 20)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    assert (got.clusters is None) == (want.clusters is None)
    if got.clusters is not None and want.clusters is not None:
        np.testing.assert_array_equal(got.clusters, want.clusters)
    np.testing.assert_array_equal(scaled, before)  # the caller's array is not rescaled in place


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
        "badge",
        "cluster_margin",
        "cold_hybrid",
        "entropy",
        "hybrid",
        "kcenter",
        "kmeans",
        "least_confidence",
        "margin",
        "random",
        "ratio",
        "typiclust",
    ]
    assert set(STRATEGIES) == set(strategy_names())


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        get_strategy("foo")
    assert str(info.value) == (
        "unknown strategy 'foo'; valid: badge, cluster_margin, cold_hybrid, entropy, hybrid, kcenter, kmeans, "
        "least_confidence, margin, random, ratio, typiclust"
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


def test_pool_view_keeps_unit_embeddings_without_copying() -> None:
    pool = make_pool()
    assert pool.embeddings is not None
    again = PoolView(embeddings=pool.embeddings, uncertainty=pool.uncertainty)
    assert again.embeddings is pool.embeddings  # already unit float32: no copy, only the norm pass
    assert again.uncertainty is pool.uncertainty


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 0.5, 3.0, 1e4, 1e30])
def test_pool_view_rescales_rows_to_unit_length(scale: float) -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(20, 6)) * scale
    raw[3] = 0.0  # a row with no direction stays zero
    pool = PoolView(embeddings=raw, reference_embeddings=raw[:4] * 7.0)
    assert pool.embeddings is not None and pool.reference_embeddings is not None
    assert pool.embeddings.dtype == np.float32 and pool.embeddings.flags.c_contiguous
    norms = np.linalg.norm(pool.embeddings, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1.0, rtol=1e-6)
    assert norms[3] == 0.0
    expected = np.delete(raw, 3, axis=0) / np.linalg.norm(np.delete(raw, 3, axis=0), axis=1, keepdims=True)
    np.testing.assert_allclose(np.delete(pool.embeddings, 3, axis=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pool.reference_embeddings[[0, 1, 2]], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("field", ["embeddings", "reference_embeddings"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_pool_view_rejects_non_finite_embeddings(field: str, bad: float) -> None:
    x = np.ones((5, 3), dtype=np.float32)
    x[2, 1] = bad
    arrays = {"embeddings": np.ones((5, 3), dtype=np.float32), field: x}
    with pytest.raises(InvalidScoresError, match=rf"{field} row 2 has a non-finite value"):
        PoolView(**arrays)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, -0.5])
def test_pool_view_rejects_infinite_or_negative_uncertainty(bad: float) -> None:
    u = np.array([0.1, np.nan, bad, 0.3])
    with pytest.raises(InvalidScoresError, match=r"uncertainty of item 2 is"):
        PoolView(uncertainty=u)
    assert PoolView(uncertainty=np.array([0.1, np.nan])).available == 1  # NaN means excluded, not invalid


def test_pool_view_rejects_non_numeric_embeddings() -> None:
    with pytest.raises(InvalidScoresError, match="real numeric"):
        PoolView(embeddings=np.ones((2, 2), dtype=bool))
    with pytest.raises(InvalidScoresError, match="2-D"):
        PoolView(embeddings=np.ones(4, dtype=np.float32))


def test_the_template_checks_budget_needs_and_pool_state_before_the_rule() -> None:
    """A strategy written on StrategyBase gets every check for free; its rule only runs on a valid request."""
    calls: list[int] = []

    @dataclass(frozen=True)
    class FirstItems(StrategyBase):
        name: str = "first"
        measure: str | None = None
        needs_embeddings: bool = True

        def _select(self, pool: PoolView, budget: int) -> Selection:
            calls.append(budget)
            indices = np.flatnonzero(pool.usable)[:budget].astype(np.int64)
            return Selection(indices=indices, scores=np.zeros(budget))

    strategy = FirstItems()
    with pytest.raises(InvalidBudgetError):
        strategy.select(make_pool(), 0)
    with pytest.raises(InvalidOptionError, match="strategy 'first' needs embeddings"):
        strategy.select(PoolView(size=3), 1)
    with pytest.raises(EmptyPoolError):
        strategy.select(make_pool(n=3, excluded=3), 1)
    with pytest.raises(PoolExhaustedError):
        strategy.select(make_pool(n=3, excluded=1), 3)
    assert calls == []
    assert strategy.select(make_pool(), 2).indices.tolist() == np.flatnonzero(make_pool().usable)[:2].tolist()
    assert calls == [2]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: get_strategy("hybrid", candidates=0.5), "'candidates' must be >= 1"),
        (lambda: get_strategy("hybrid", weight=1.5), "'weight' must be in"),
        (lambda: get_strategy("hybrid", diversify="spectral"), "unknown hybrid diversify mode 'spectral'"),
        (lambda: get_strategy("hybrid", measure="variance"), "unknown uncertainty measure 'variance'"),
        (lambda: get_strategy("hybrid", pick="medoid"), "unknown hybrid pick mode 'medoid'"),
        (lambda: get_strategy("hybrid", pick="centroid", diversify="greedy"), "needs 'diversify: kmeans'"),
        (lambda: get_strategy("cold_hybrid", candidates=0.5), "'candidates' must be >= 1"),
        (lambda: get_strategy("cold_hybrid", cold_candidates=0), "'cold_candidates' must be >= 1"),
        (lambda: get_strategy("cold_hybrid", per_class=-1), "'per_class' must be >= 0"),
        (lambda: get_strategy("cold_hybrid", measure="variance"), "unknown uncertainty measure 'variance'"),
        (lambda: get_strategy("kmeans", clusters=0), "'clusters' must be >= 1"),
        (lambda: get_strategy("kmeans", pick="medoid"), "unknown kmeans pick mode 'medoid'"),
        (lambda: get_strategy("kmeans", measure="variance"), "unknown uncertainty measure 'variance'"),
        (lambda: ClassBalanced(get_strategy("margin"), oversample=0.5), "'oversample' must be >= 1"),
        (lambda: get_strategy("cluster_margin", candidates=0.5), "'candidates' must be >= 1"),
        (lambda: get_strategy("cluster_margin", clusters=0), "'clusters' must be > 0"),
        (lambda: get_strategy("cluster_margin", pick="medoid"), "unknown cluster_margin pick mode 'medoid'"),
        (lambda: get_strategy("typiclust", neighbors=0), "'neighbors' must be an integer >= 1"),
        (lambda: get_strategy("typiclust", max_clusters=0), "'max_clusters' must be an integer >= 1"),
        (lambda: ClassBalanced("margin"), "class balance wraps a strategy"),  # type: ignore[arg-type]
    ],
)
def test_invalid_options_are_named(build: Callable[[], Strategy], message: str) -> None:
    with pytest.raises(InvalidOptionError if "unknown" not in message else UnknownStrategyError, match=message):
        build()


def test_class_balance_needs_classes() -> None:
    with pytest.raises(InvalidOptionError, match=r"PoolView.classes"):
        ClassBalanced(get_strategy("margin")).select(replace(make_pool(), classes=None), 3)


def test_measure_spellings_are_normalised_everywhere() -> None:
    """One normalisation (``canonical_name``) for strategy, measure and reducer names."""
    from strategies import UncertaintyStrategy, aggregate_boxes, canonical_name, uncertainty_scores

    assert canonical_name("least-confidence") == "least_confidence"
    assert get_strategy("least-confidence").name == "least_confidence"
    assert UncertaintyStrategy("least-confidence").measure == "least_confidence"
    assert get_strategy("hybrid", measure="least-confidence").measure == "least_confidence"
    assert get_strategy("kmeans", measure="least-confidence").measure == "least_confidence"
    np.testing.assert_array_equal(
        uncertainty_scores(np.array([[0.7, 0.3]]), "least-confidence"),
        uncertainty_scores([[0.7, 0.3]], "least_confidence"),
    )
    np.testing.assert_array_equal(
        aggregate_boxes([0.2, 0.4], [0, 0], 1, reducer="topk-mean"), aggregate_boxes([0.2, 0.4], [0, 0], 1, "topk_mean")
    )


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
