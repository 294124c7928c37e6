"""The stored array formats round-trip (hypothesis): what store.blobs writes is what it reads back."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from store import blobs

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
finite16 = st.floats(allow_nan=False, allow_infinity=False, width=16)


@given(arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 5)), elements=finite32))
def test_float32_formats_round_trip_exactly(values: np.ndarray) -> None:
    for fmt in (blobs.PROBS, blobs.BOXES, blobs.BOX_CONF):
        blob = fmt.encode(values)
        assert len(blob) == 4 * values.size
        back = fmt.decode(blob, (-1, values.shape[1]))
        assert back.dtype == np.float32 and back.flags.writeable and np.array_equal(back, values)
        view = fmt.decode(blob, values.shape, writable=False)
        assert np.array_equal(view, values)


@given(arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 8)), elements=finite16))
def test_float16_formats_keep_what_float16_holds(values: np.ndarray) -> None:
    for fmt in (blobs.BOX_SCORES, blobs.EMBEDDING):
        blob = fmt.encode(values)
        assert len(blob) == 2 * values.size
        back = fmt.decode(blob, values.shape)
        assert back.dtype == np.float32 and np.array_equal(back, values.astype(np.float16).astype(np.float32))


@given(st.lists(arrays(np.float32, st.tuples(st.integers(0, 7), st.just(2)), elements=finite32), max_size=6))
def test_polygons_round_trip(polygons: list[np.ndarray]) -> None:
    blob = blobs.encode_polygons(polygons)
    back = blobs.decode_polygons(blob, len(polygons))
    assert len(back) == len(polygons)
    for original, decoded in zip(polygons, back, strict=True):
        assert decoded.shape == original.shape and np.array_equal(decoded, original)


@given(st.lists(arrays(np.float32, st.just(4), elements=finite16), min_size=1, max_size=20))
def test_rows_joined_decode_as_one_matrix(rows: list[np.ndarray]) -> None:
    """Bulk reads join many rows' blobs and decode once: the same as decoding each row."""
    joined = b"".join(blobs.EMBEDDING.encode(r) for r in rows)
    matrix = blobs.EMBEDDING.decode(joined, (len(rows), 4))
    assert np.array_equal(matrix, np.stack([blobs.EMBEDDING.decode(blobs.EMBEDDING.encode(r)) for r in rows]))


@settings(max_examples=200)
@given(arrays(np.float32, 4, elements=st.floats(width=32)))
def test_an_embedding_float16_cannot_hold_is_refused(vector: np.ndarray) -> None:
    blob = blobs.EMBEDDING.encode_finite(vector)
    # float16's largest value is 65504; anything from 65520 on rounds to infinity
    fits = bool(np.isfinite(vector).all()) and bool((np.abs(vector) < 65520).all())
    assert (blob is not None) == fits
    if blob is not None:
        assert np.isfinite(blobs.EMBEDDING.decode(blob)).all()


def test_prediction_columns_for_each_task() -> None:
    cls = blobs.prediction_columns(np.array([0.2, 0.8], np.float32), None, None, None, None)
    assert cls["n_boxes"] == 0 and cls["boxes"] is None and cls["polygons"] is None
    assert np.array_equal(blobs.PROBS.decode(cls["probs"]), np.array([0.2, 0.8], np.float32))
    none = blobs.prediction_columns(None, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3)), [])
    assert none["n_boxes"] == 0 and none["probs"] is None and none["boxes"] == b"" and none["polygons"] is None
    boxes = np.array([[1, 2, 3, 4]], np.float32)
    det = blobs.prediction_columns(None, boxes, np.array([0.9]), np.array([[0.1, 0.9]]), [np.zeros((3, 2))])
    assert det["n_boxes"] == 1 and np.array_equal(blobs.BOXES.decode(det["boxes"], (1, 4)), boxes)
    assert len(blobs.decode_polygons(det["polygons"], 1)[0]) == 3
