"""The stored array formats: the one module that writes them and the one that reads them back.

Arrays are stored as little-endian binary blobs, one row per item and model version: compact, one ``b"".join`` away
from a contiguous numpy array for a whole pool, and the same bytes on SQLite and Postgres.

- ``predictions.probs``: float32 (K,) class probabilities (classification).
- ``predictions.boxes``: float32 (n, 4) xyxy in original-image pixels (after EXIF orientation); ``box_conf``
  float32 (n,); ``box_scores`` float16 (n, K) per-box class scores.
- ``predictions.polygons`` (segmentation): int32 (n,) point counts, then float32 (sum of counts, 2) points.
- ``embeddings.vector``: float16 (D,), L2-normalised pooled backbone features (half the size of float32; the cosine
  error is below 1e-3, far under any near-duplicate threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class ArrayBlob:
    """One fixed-dtype array format, decoded to float32."""

    dtype: str  # a little-endian numpy dtype, e.g. "<f4"

    def encode(self, array: ArrayLike) -> bytes:
        return np.ascontiguousarray(array, dtype=self.dtype).tobytes()

    def encode_finite(self, array: ArrayLike) -> bytes | None:
        """The blob, or None when a value is not finite *as stored* (float16 overflows above 65504)."""
        with np.errstate(over="ignore", invalid="ignore"):  # the overflow is what this checks for
            stored = np.ascontiguousarray(array, dtype=self.dtype)
        return stored.tobytes() if bool(np.isfinite(stored).all()) else None

    def decode(
        self, blob: bytes | None, shape: tuple[int, ...] = (-1,), *, writable: bool = True
    ) -> NDArray[np.float32]:
        """``blob`` (one row, or many rows joined) as float32 of ``shape`` (one -1 allowed); None reads as empty.

        ``writable=False`` skips the copy when the stored dtype already is float32: the array is then a read-only
        view of ``blob`` (bulk reads: one copy for the join, none after it).
        """
        values = np.frombuffer(blob or b"", dtype=self.dtype).reshape(shape)
        return values.astype(np.float32, copy=writable)


PROBS = ArrayBlob("<f4")
BOXES = ArrayBlob("<f4")
BOX_CONF = ArrayBlob("<f4")
BOX_SCORES = ArrayBlob("<f2")
EMBEDDING = ArrayBlob("<f2")


def encode_polygons(polygons: Sequence[ArrayLike]) -> bytes:
    """n polygons of (m_i, 2) points: their counts, then every point."""
    points = [np.asarray(p, dtype="<f4").reshape(-1, 2) for p in polygons]
    counts = np.array([len(p) for p in points], dtype="<i4")
    flat = np.concatenate(points) if points else np.zeros((0, 2), "<f4")
    return counts.tobytes() + np.ascontiguousarray(flat, dtype="<f4").tobytes()


def decode_polygons(blob: bytes | None, n: int) -> list[NDArray[np.float32]]:
    if not blob or n == 0:
        return []
    counts = np.frombuffer(blob, dtype="<i4", count=n)
    points = np.frombuffer(blob, dtype="<f4", offset=4 * n).reshape(-1, 2)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [points[bounds[i] : bounds[i + 1]].astype(np.float32) for i in range(n)]


def prediction_columns(
    probs: Any, boxes: Any, box_conf: Any, box_scores: Any, polygons: Sequence[Any] | None
) -> dict[str, Any]:
    """The blob columns of one ``predictions`` row. Classification stores only ``probs``; detection stores its
    boxes (possibly none) and no ``probs``."""
    has_boxes = probs is None
    empty: list[float] = []
    return {
        "probs": None if probs is None else PROBS.encode(probs),
        "n_boxes": 0 if boxes is None else len(boxes),
        "boxes": BOXES.encode(empty if boxes is None else boxes) if has_boxes else None,
        "box_conf": BOX_CONF.encode(empty if box_conf is None else box_conf) if has_boxes else None,
        "box_scores": BOX_SCORES.encode(empty if box_scores is None else box_scores) if has_boxes else None,
        "polygons": encode_polygons(polygons) if polygons else None,
    }
