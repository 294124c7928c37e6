"""Box-to-image aggregation: hand cases for each reducer, the empty-image policy, validation, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    REDUCERS,
    InvalidOptionError,
    InvalidScoresError,
    UnknownStrategyError,
    aggregate_boxes,
)

# Image 0: boxes 0.2, 0.9, 0.5, 0.4 · image 1: no box · image 2: one box 0.3 · image 3: boxes 0.6, 0.6.
# Boxes are listed out of image order on purpose.
BOXES = np.array([0.6, 0.2, 0.3, 0.9, 0.6, 0.5, 0.4])
IMAGES = np.array([3, 0, 2, 0, 3, 0, 0])


def test_max() -> None:
    assert aggregate_boxes(BOXES, IMAGES, 4, "max").tolist() == pytest.approx([0.9, 1.0, 0.3, 0.6])


def test_mean() -> None:
    assert aggregate_boxes(BOXES, IMAGES, 4, "mean").tolist() == pytest.approx([0.5, 1.0, 0.3, 0.6])


def test_sum() -> None:
    assert aggregate_boxes(BOXES, IMAGES, 4, "sum").tolist() == pytest.approx([2.0, 1.0, 0.3, 1.2])


def test_topk_mean() -> None:
    # Image 0: (0.9 + 0.5 + 0.4) / 3; image 2 has one box (< k): its mean; image 3: two equal boxes.
    result = aggregate_boxes(BOXES, IMAGES, 4, "topk_mean", top_k=3)
    assert result.tolist() == pytest.approx([0.6, 1.0, 0.3, 0.6])
    assert aggregate_boxes(BOXES, IMAGES, 4, "topk_mean", top_k=2)[0] == pytest.approx(0.7)
    assert aggregate_boxes(BOXES, IMAGES, 4, "topk_mean", top_k=1)[0] == pytest.approx(0.9)
    assert aggregate_boxes(BOXES, IMAGES, 4, "topk_mean", top_k=100)[0] == pytest.approx(0.5)


def test_hyphen_spelling_of_reducer() -> None:
    assert aggregate_boxes(BOXES, IMAGES, 4, "topk-mean", top_k=2)[0] == pytest.approx(0.7)


@pytest.mark.parametrize("reducer", REDUCERS)
def test_empty_policy_score(reducer: str) -> None:
    assert aggregate_boxes(BOXES, IMAGES, 4, reducer, empty=0.25)[1] == 0.25
    assert aggregate_boxes(BOXES, IMAGES, 4, reducer, empty=0)[1] == 0.0


@pytest.mark.parametrize("reducer", REDUCERS)
def test_empty_policy_exclude_gives_nan(reducer: str) -> None:
    result = aggregate_boxes(BOXES, IMAGES, 4, reducer, empty="exclude")
    assert math.isnan(result[1])
    assert not np.isnan(result[[0, 2, 3]]).any()


def test_no_boxes_at_all() -> None:
    result = aggregate_boxes(np.empty(0), np.empty(0, dtype=np.int64), 3)
    assert result.tolist() == [1.0, 1.0, 1.0]
    assert aggregate_boxes([], np.empty(0, dtype=np.int32), 0).shape == (0,)


def test_result_dtype_and_inputs_of_other_dtypes() -> None:
    result = aggregate_boxes(BOXES.astype(np.float32), IMAGES.astype(np.int32), 4, "mean")
    assert result.dtype == np.float64
    assert result.tolist() == pytest.approx([0.5, 1.0, 0.3, 0.6])


# --- validation ---------------------------------------------------------------------------------------------


def test_unknown_reducer_lists_valid_ones() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        aggregate_boxes(BOXES, IMAGES, 4, "median")
    assert str(info.value) == "unknown reducer 'median'; valid: max, mean, sum, topk_mean"


@pytest.mark.parametrize(
    ("boxes", "images", "n_images", "message"),
    [
        ([0.1, 0.2], [0], 2, r"2 boxes but image_index has 1"),
        ([0.1, 0.2], [0, 2], 2, r"image_index of box 1 is 2, outside \[0, 2\)"),
        ([0.1, 0.2], [-1, 0], 2, r"image_index of box 0 is -1"),
        ([0.1, 0.2], [0.0, 1.0], 2, r"image_index must be a 1-D integer array"),
        ([0.1, float("nan")], [0, 1], 2, r"box 1 has a non-finite value"),
        ([0.1, -0.2], [0, 1], 2, r"box 1 has a negative value"),
        ([[0.1, 0.2]], [0, 1], 2, r"box_uncertainty must be a 1-D array"),
    ],
)
def test_invalid_arrays(boxes: object, images: object, n_images: int, message: str) -> None:
    with pytest.raises(InvalidScoresError, match=message):
        aggregate_boxes(boxes, images, n_images)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, r"top_k must be an integer >= 1"),
        ({"top_k": 2.0}, r"top_k must be an integer >= 1"),
        ({"empty": -0.5}, r"empty must be a finite number >= 0 or 'exclude'"),
        ({"empty": float("nan")}, r"empty must be"),
        ({"empty": "skip"}, r"empty must be"),
        ({"empty": True}, r"empty must be"),
        ({"n_images": -1}, r"n_images must be an integer >= 0"),
    ],
)
def test_invalid_options(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"n_images": 4, **kwargs}
    with pytest.raises(InvalidOptionError, match=message):
        aggregate_boxes(BOXES, IMAGES, **args)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------------------


@st.composite
def box_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n_images = draw(st.integers(1, 8))
    n_boxes = draw(st.integers(0, 30))
    images = draw(st.lists(st.integers(0, n_images - 1), min_size=n_boxes, max_size=n_boxes))
    # Few distinct values: ties inside an image exercise the top-k ordering.
    values = draw(
        st.lists(
            st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0)),
            min_size=n_boxes,
            max_size=n_boxes,
        )
    )
    return np.array(values, dtype=np.float64), np.array(images, dtype=np.int64), n_images


def reference(values: np.ndarray, images: np.ndarray, n_images: int, reducer: str, k: int) -> list[float]:
    out = []
    for image in range(n_images):
        mine = sorted(values[images == image].tolist(), reverse=True)
        if not mine:
            out.append(math.nan)
        elif reducer == "max":
            out.append(mine[0])
        elif reducer == "mean":
            out.append(sum(mine) / len(mine))
        elif reducer == "sum":
            out.append(sum(mine))
        else:
            out.append(sum(mine[:k]) / len(mine[:k]))
    return out


@pytest.mark.heavy
@settings(max_examples=200, deadline=None)
@given(box_sets(), st.integers(1, 5))
def test_every_reducer_matches_a_per_image_loop(boxes: tuple[np.ndarray, np.ndarray, int], k: int) -> None:
    values, images, n_images = boxes
    for reducer in REDUCERS:
        result = aggregate_boxes(values, images, n_images, reducer, top_k=k, empty="exclude")
        np.testing.assert_allclose(result, reference(values, images, n_images, reducer, k), rtol=1e-12)


@pytest.mark.heavy
@settings(max_examples=200, deadline=None)
@given(box_sets(), st.integers(1, 5))
def test_max_topk_mean_mean_are_ordered(boxes: tuple[np.ndarray, np.ndarray, int], k: int) -> None:
    values, images, n_images = boxes
    got = {r: aggregate_boxes(values, images, n_images, r, top_k=k, empty="exclude") for r in REDUCERS}
    counts = np.bincount(images, minlength=n_images)
    has = counts > 0
    tol = 1e-12
    assert np.all(got["max"][has] >= got["topk_mean"][has] - tol)
    assert np.all(got["topk_mean"][has] >= got["mean"][has] - tol)
    np.testing.assert_allclose(got["sum"][has], got["mean"][has] * counts[has], rtol=1e-12, atol=1e-12)
    assert np.isnan(got["max"][~has]).all()
