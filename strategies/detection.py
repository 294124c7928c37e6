"""Per-image uncertainty for object detection: aggregate the uncertainty of an image's boxes into one number.

A detector scores boxes, but we label images, so each image needs one score. The reducer says how its boxes
combine:

* ``max``: the worst box decides (one confusing object is enough to make an image worth labeling);
* ``mean``: the typical box; an image full of easy boxes with one hard one ranks low;
* ``sum``: more uncertain boxes = more labeling value (and more labeling work); unbounded, not in [0, 1];
* ``topk_mean``: mean of the ``top_k`` most uncertain boxes (all of them when an image has fewer): between max
  and mean, robust to a single spurious box.

Images with no box are a policy decision (``empty``): a score, by default 1.0 (as uncertain as a box can
be, because an image where the model finds nothing is where it most likely misses objects), or ``"exclude"``,
which gives NaN. **NaN in the output means excluded**: the selectors never pick it.

Everything is vectorised (bincount, maximum.at, two argsorts): no Python loop over images or boxes.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

from strategies._validate import check_count, check_name, first_bad, is_int, real_array
from strategies.errors import InvalidOptionError, InvalidScoresError

__all__ = ["EXCLUDE", "REDUCERS", "aggregate_boxes"]

REDUCERS: tuple[str, ...] = ("max", "mean", "sum", "topk_mean")
EXCLUDE = "exclude"


def _check_empty(empty: object) -> float:
    """The score of an image with no box: NaN for "exclude", else a finite float >= 0."""
    if isinstance(empty, str):
        if empty == EXCLUDE:
            return float("nan")
    elif isinstance(empty, numbers.Real) and not isinstance(empty, bool | np.bool_):
        value = float(empty)
        if np.isfinite(value) and value >= 0:
            return value
    raise InvalidOptionError(f"empty must be a finite number >= 0 or {EXCLUDE!r}, got {empty!r}")


def _check_image_index(image_index: ArrayLike, n_boxes: int, n_images: int) -> NDArray[np.intp]:
    idx = np.asarray(image_index)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise InvalidScoresError(
            f"image_index must be a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}"
        )
    if idx.shape[0] != n_boxes:
        raise InvalidScoresError(f"box_uncertainty has {n_boxes} boxes but image_index has {idx.shape[0]}")
    if n_boxes and (idx.min() < 0 or idx.max() >= n_images):
        box = int(np.flatnonzero((idx < 0) | (idx >= n_images))[0])
        raise InvalidScoresError(
            f"image_index of box {box} is {idx[box]}, outside [0, {n_images}) for n_images={n_images}"
        )
    return idx.astype(np.intp, copy=False)


def _topk_sum(
    values: NDArray[np.float64], idx: NDArray[np.intp], counts: NDArray[np.intp], k: int
) -> NDArray[np.float64]:
    """Per image, the sum of its ``k`` largest values: sort by (image, value descending), keep ranks < k."""
    # Two passes beat one lexsort (~30% on 10^7 boxes): by value descending, then stably by image.
    by_value = np.argsort(-values)
    order = by_value[np.argsort(idx[by_value], kind="stable")]
    group_start = np.cumsum(counts) - counts  # where each image's run begins in the sorted order
    sorted_idx = idx[order]
    rank = np.arange(order.shape[0]) - group_start[sorted_idx]
    keep = rank < k
    return np.bincount(sorted_idx[keep], weights=values[order][keep], minlength=counts.shape[0]).astype(
        np.float64, copy=False
    )


def aggregate_boxes(
    box_uncertainty: ArrayLike,
    image_index: ArrayLike,
    n_images: int,
    reducer: str = "max",
    top_k: int = 3,
    empty: float | str = 1.0,
) -> NDArray[np.float64]:
    """One uncertainty per image, (n_images,) float64, from per-box uncertainties (B,).

    ``image_index[b]`` is the image (in [0, n_images)) of box b; boxes may come in any order. ``reducer`` is
    one of ``REDUCERS``; ``top_k`` (>= 1) is used by ``topk_mean`` only. ``empty`` scores images without
    boxes: a finite float >= 0, or ``"exclude"`` for NaN, which means "never selectable".

    Raises:
        InvalidScoresError: shapes disagree, an index is out of range, or a box value is non-finite or
            negative.
        UnknownStrategyError: ``reducer`` is unknown (the message lists ``REDUCERS``).
        InvalidOptionError: bad ``n_images``, ``top_k`` or ``empty``.
    """
    n_images = check_count(n_images, "n_images")
    name = check_name(reducer, REDUCERS, "reducer")
    if not is_int(top_k) or int(top_k) < 1:
        raise InvalidOptionError(f"top_k must be an integer >= 1, got {top_k!r}")
    empty_value = _check_empty(empty)
    values = real_array(box_uncertainty, "box_uncertainty", ndim=1)
    first_bad(values, "box")
    idx = _check_image_index(image_index, values.shape[0], n_images)
    return _aggregate(values.astype(np.float64, copy=False), idx, n_images, name, int(top_k), empty_value)


def _aggregate(
    values: NDArray[np.float64], idx: NDArray[np.intp], n_images: int, reducer: str, k: int, empty: float
) -> NDArray[np.float64]:
    counts = np.bincount(idx, minlength=n_images)
    out: NDArray[np.float64]
    has_boxes = counts > 0
    if reducer == "max":
        out = np.zeros(n_images)  # values are >= 0, so 0 is a neutral start
        np.maximum.at(out, idx, values)
    elif reducer == "sum":
        out = np.bincount(idx, weights=values, minlength=n_images).astype(np.float64, copy=False)
    else:
        totals = (
            np.bincount(idx, weights=values, minlength=n_images)
            if reducer == "mean"
            else _topk_sum(values, idx, counts, k)
        )
        used = counts if reducer == "mean" else np.minimum(counts, k)
        out = np.divide(totals, used, out=np.zeros(n_images), where=has_boxes)
    out[~has_boxes] = empty
    return out
