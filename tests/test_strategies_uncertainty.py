"""Uncertainty measures: hand-computed values, edge cases, validation, and properties on generated inputs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies import (
    UNCERTAINTY_MEASURES,
    InvalidOptionError,
    InvalidScoresError,
    UnknownStrategyError,
    entropy,
    least_confidence,
    margin,
    random_scores,
    ratio,
    uncertainty_scores,
)

MEASURE_FUNCTIONS = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "ratio": ratio,
}


def hand_entropy(row: list[float]) -> float:
    """The documented formula, written out: H(p / sum p) / log K."""
    total = sum(row)
    q = [x / total for x in row]
    return -sum(x * math.log(x) for x in q if x > 0) / math.log(len(row))


# --- hand-computed values -----------------------------------------------------------------------------------


def test_classification_row() -> None:
    p = [[0.5, 0.3, 0.2]]
    assert least_confidence(p) == pytest.approx([0.5])
    assert margin(p) == pytest.approx([0.8])
    assert ratio(p) == pytest.approx([0.6])
    assert entropy(p) == pytest.approx([hand_entropy([0.5, 0.3, 0.2])])
    # 0.5·ln2 + 0.3·ln(1/0.3) + 0.2·ln5 over ln3, by hand:
    assert entropy(p)[0] == pytest.approx(0.9372305632, abs=1e-9)


def test_several_rows_are_scored_independently() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    assert least_confidence(p) == pytest.approx([0.3, 0.6, 0.0])
    assert margin(p) == pytest.approx([0.5, 1.0, 0.0])
    assert ratio(p) == pytest.approx([0.2 / 0.7, 1.0, 0.0])
    assert entropy(p) == pytest.approx([hand_entropy(list(r)) for r in p])


def test_detection_rows_need_not_sum_to_one() -> None:
    # Independent sigmoids of one box: [0.6, 0.3, 0.0, 0.0]
    p = [[0.6, 0.3, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2], [0.9, 0.8, 0.7, 0.1]]
    assert least_confidence(p) == pytest.approx([0.4, 0.8, 0.1])
    assert margin(p) == pytest.approx([0.7, 1.0, 0.9])
    assert ratio(p) == pytest.approx([0.5, 1.0, 0.8 / 0.9])
    assert entropy(p) == pytest.approx([hand_entropy(r) for r in p])
    assert entropy(p)[1] == pytest.approx(1.0)  # all classes equally likely, whatever the scale


def test_single_class() -> None:
    p = [[0.8], [0.0], [1.0]]
    assert least_confidence(p) == pytest.approx([0.2, 1.0, 0.0])
    assert margin(p) == pytest.approx([0.2, 1.0, 0.0])  # p_(2) = 0
    assert entropy(p).tolist() == [0.0, 0.0, 0.0]
    assert ratio(p).tolist() == [0.0, 0.0, 0.0]


def test_zero_rows_are_maximally_uncertain() -> None:
    p = [[0.0, 0.0, 0.0]]
    assert least_confidence(p).tolist() == [1.0]
    assert margin(p).tolist() == [1.0]
    assert entropy(p).tolist() == [1.0]
    assert ratio(p).tolist() == [1.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtypes_agree(dtype: type) -> None:
    p = np.array([[0.5, 0.25, 0.25], [0.75, 0.125, 0.125]])  # exact in float16
    for name in UNCERTAINTY_MEASURES:
        result = uncertainty_scores(p.astype(dtype), name)
        assert result.dtype == np.float64
        np.testing.assert_allclose(result, uncertainty_scores(p, name), rtol=1e-12)


def test_integer_one_hot_input() -> None:
    for name in UNCERTAINTY_MEASURES:
        assert uncertainty_scores(np.array([[0, 1, 0]]), name).tolist() == [0.0]


def test_empty_input_gives_empty_result() -> None:
    for name in UNCERTAINTY_MEASURES:
        result = uncertainty_scores(np.empty((0, 5), dtype=np.float32), name)
        assert result.shape == (0,)
        assert result.dtype == np.float64


def test_values_a_hair_above_one_are_clipped() -> None:
    p = np.array([[1.0 + 5e-7, 0.0]])
    assert least_confidence(p).tolist() == [0.0]
    assert margin(p).tolist() == [0.0]


def test_hyphen_spelling_and_input_not_modified() -> None:
    p = np.array([[1.0 + 5e-7, 0.2]], dtype=np.float64)
    before = p.copy()
    assert uncertainty_scores(p, "least-confidence") == pytest.approx([0.0])
    np.testing.assert_array_equal(p, before)


def test_large_input_spans_several_blocks() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=150_000).astype(np.float32)
    result = uncertainty_scores(p, "margin")
    top2 = np.sort(p.astype(np.float64), axis=1)[:, -2:]
    np.testing.assert_allclose(result, 1 - (top2[:, 1] - top2[:, 0]), rtol=0, atol=1e-12)


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([[0.5, 0.5], [0.1, 0.2], [0.3, 0.3], [0.2, float("nan")]], r"row 3 has a non-finite value \(nan\)"),
        ([[0.5, float("inf")]], r"row 0 has a non-finite value \(inf\)"),
        ([[0.5, 0.5], [0.9, -0.1]], r"row 1 has a negative value"),
        ([[0.5, 0.5], [1.5, 0.0]], r"row 1 has a value above 1"),
        ([0.5, 0.5], r"must be a 2-D array, got shape \(2,\)"),
        (np.zeros((2, 2, 2)), r"must be a 2-D array"),
        (np.zeros((3, 0)), r"at least one class column"),
        ([["a", "b"]], r"real numeric array"),
        ([[True, False]], r"real numeric array"),
    ],
)
@pytest.mark.parametrize("name", UNCERTAINTY_MEASURES)
def test_invalid_scores_are_rejected(scores: object, message: str, name: str) -> None:
    with pytest.raises(InvalidScoresError, match=message):
        uncertainty_scores(scores, name)  # type: ignore[arg-type]
    with pytest.raises(InvalidScoresError, match=message):
        MEASURE_FUNCTIONS[name](scores)  # type: ignore[arg-type]


def test_unknown_measure_lists_valid_ones() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        uncertainty_scores([[0.5, 0.5]], "bald")
    assert str(info.value) == ("unknown uncertainty measure 'bald'; valid: entropy, least_confidence, margin, ratio")
    assert info.value.name == "bald"
    assert info.value.valid == ("entropy", "least_confidence", "margin", "ratio")
    assert isinstance(info.value, ValueError)
    restored = pickle.loads(pickle.dumps(info.value))
    assert str(restored) == str(info.value)


def test_unknown_measure_checked_before_scores() -> None:
    with pytest.raises(UnknownStrategyError):
        uncertainty_scores([[float("nan")]], "nope")


# --- properties ---------------------------------------------------------------------------------------------

score_matrices = st.integers(1, 6).flatmap(
    lambda k: hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 8), st.just(k)),
        elements=st.floats(0.0, 1.0, allow_subnormal=False),
    )
)


def normalised(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


@settings(max_examples=200, deadline=None)
@given(score_matrices, st.booleans())
def test_all_measures_in_unit_interval(p: np.ndarray, as_probabilities: bool) -> None:
    p = normalised(p) if as_probabilities else p
    for name in UNCERTAINTY_MEASURES:
        result = uncertainty_scores(p, name)
        assert result.shape == (p.shape[0],)
        assert np.all((result >= 0.0) & (result <= 1.0))


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 50), st.floats(1e-3, 1.0))
def test_entropy_is_one_for_uniform_rows(k: int, level: float) -> None:
    assert entropy(np.full((1, k), 1.0 / k))[0] == pytest.approx(1.0, abs=1e-12)
    assert entropy(np.full((1, k), level))[0] == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 50).flatmap(lambda k: st.tuples(st.just(k), st.integers(0, k - 1))))
def test_one_hot_is_zero_for_every_measure(k_and_hot: tuple[int, int]) -> None:
    k, hot = k_and_hot
    row = np.zeros((1, k))
    row[0, hot] = 1.0
    for name in UNCERTAINTY_MEASURES:
        assert uncertainty_scores(row, name).tolist() == [0.0]


@settings(max_examples=200, deadline=None)
@given(score_matrices)
def test_one_hot_is_minimal(p: np.ndarray) -> None:
    one_hot = np.zeros((1, p.shape[1]))
    one_hot[0, 0] = 1.0
    for name in UNCERTAINTY_MEASURES:
        floor = uncertainty_scores(one_hot, name)[0]
        assert np.all(uncertainty_scores(p, name) >= floor)


@settings(max_examples=200, deadline=None)
@given(score_matrices, st.data())
def test_column_permutation_does_not_change_scores(p: np.ndarray, data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(p.shape[1])))
    for name in UNCERTAINTY_MEASURES:
        np.testing.assert_allclose(
            uncertainty_scores(p[:, order], name), uncertainty_scores(p, name), rtol=0, atol=1e-12
        )


@settings(max_examples=200, deadline=None)
@given(score_matrices)
def test_least_confidence_and_margin_match_a_full_sort(p: np.ndarray) -> None:
    s = np.sort(p, axis=1)[:, ::-1]
    second = s[:, 1] if p.shape[1] > 1 else np.zeros(p.shape[0])
    np.testing.assert_allclose(least_confidence(p), 1 - s[:, 0], atol=1e-15)
    np.testing.assert_allclose(margin(p), 1 - (s[:, 0] - second), atol=1e-15)


# --- random baseline ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 200), st.integers(0, 2**32))
def test_random_scores_reproducible(n: int, seed: int) -> None:
    a = random_scores(n, seed)
    assert a.dtype == np.float64
    assert a.shape == (n,)
    np.testing.assert_array_equal(a, random_scores(n, seed))
    assert np.all((a >= 0.0) & (a < 1.0))
    np.testing.assert_array_equal(random_scores(n + 5, seed)[:n], a)  # draw i does not depend on n


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 2**32))
def test_random_scores_differ_between_seeds(seed: int, offset: int) -> None:
    assert not np.array_equal(random_scores(20, seed), random_scores(20, seed + offset))


@pytest.mark.parametrize(("n", "seed"), [(-1, 0), (3, -1), (2.5, 0), (3, 1.0), (True, 0)])
def test_random_scores_rejects_bad_arguments(n: object, seed: object) -> None:
    with pytest.raises(InvalidOptionError):
        random_scores(n, seed)  # type: ignore[arg-type]
