"""Whether a fine-tuned candidate replaces the current model: a pure decision on the two models' metrics, and the
paired bootstrap interval that tells a real improvement from evaluation noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PROMOTE_POLICIES = ("auto", "always", "never")


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str  # one line for the report and the registry's note


def decide_promotion(metric: str, candidate: float, current: float, *, policy: str, min_delta: float) -> Promotion:
    """``train.promote``: ``always``/``never`` decide alone; ``auto`` promotes only a candidate whose ``metric``
    beats the current model's by more than ``min_delta`` on the same held-out split (a tie keeps the current one;
    a NaN metric never wins)."""
    if policy == "always":
        return Promotion(True, "promoted (train.promote: always)")
    if policy == "never":
        return Promotion(False, "kept as candidate (train.promote: never)")
    if policy != "auto":
        raise ValueError(f"unknown train.promote policy {policy!r}; valid: {', '.join(PROMOTE_POLICIES)}")
    if candidate > current + min_delta:
        return Promotion(True, f"promoted: {metric} {candidate:.4f} > {current:.4f} (current)")
    margin = f" by more than {min_delta}" if min_delta else ""
    return Promotion(
        False, f"kept as candidate: {metric} {candidate:.4f} does not beat {current:.4f} (current){margin}"
    )


@dataclass(frozen=True)
class PairedInterval:
    """Percentile bootstrap intervals from resampling the evaluation items (the same resample for both models):
    each model's metric, and the candidate-minus-current difference the promotion rule reads."""

    confidence: float
    n_items: int
    resamples: int
    candidate: tuple[float, float]
    current: tuple[float, float]
    difference: tuple[float, float]


def paired_bootstrap(
    n_items: int,
    metrics: Callable[[NDArray[np.int64]], tuple[float, float]],
    *,
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> PairedInterval | None:
    """Resample the ``n_items`` evaluation items with replacement ``resamples`` times; ``metrics(indices)`` gives
    (candidate, current) on a resample. Pairing (both models on the same resample) makes the difference's interval
    much narrower than two independent intervals: what they share in item difficulty cancels. None when there is
    nothing to resample."""
    if n_items < 1 or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([metrics(rng.integers(0, n_items, n_items)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values).all(axis=1)]
    if not len(values):
        return None
    tail = (1 - confidence) / 2 * 100

    def bounds(v: NDArray[np.float64]) -> tuple[float, float]:
        low, high = np.percentile(v, [tail, 100 - tail])
        return float(low), float(high)

    return PairedInterval(
        confidence,
        n_items,
        len(values),
        bounds(values[:, 0]),
        bounds(values[:, 1]),
        bounds(values[:, 0] - values[:, 1]),
    )


def items_for_half_width(n_items: int, interval: tuple[float, float], target: float) -> int:
    """How many evaluation items an interval of half-width ``target`` needs, from one measured on ``n_items``
    (a bootstrap interval's width shrinks as 1/sqrt(n))."""
    half = (interval[1] - interval[0]) / 2
    return max(n_items, math.ceil(n_items * (half / target) ** 2 - 1e-9)) if half > 0 else n_items  # float slack


def mean_metrics(
    candidate: NDArray[np.float64], current: NDArray[np.float64]
) -> Callable[[NDArray[np.int64]], tuple[float, float]]:
    """``paired_bootstrap``'s metric for per-item scores (1/0 for a correct/wrong classification)."""
    return lambda idx: (float(candidate[idx].mean()), float(current[idx].mean()))


def decide_with_interval(
    metric: str, candidate: float, current: float, interval: PairedInterval | None, *, policy: str, min_delta: float
) -> Promotion:
    """``decide_promotion``, and under ``auto`` with an interval also: the lower end of the paired difference's
    interval must exceed ``min_delta`` — the candidate is better beyond the evaluation's uncertainty."""
    decision = decide_promotion(metric, candidate, current, policy=policy, min_delta=min_delta)
    if interval is None or policy != "auto":
        return decision
    low, high = interval.difference
    where = (
        f"{interval.confidence:.0%} interval of candidate - current on {interval.n_items} items: "
        f"[{low:+.4f}, {high:+.4f}]"
    )
    margin = f" by more than {min_delta}" if min_delta else ""
    if decision.promote and low > min_delta:
        return Promotion(True, f"promoted: {metric} {candidate:.4f} > {current:.4f} (current); {where}")
    return Promotion(
        False,
        f"kept as candidate: {metric} {candidate:.4f} ({where}) does not beat {current:.4f} (current){margin}",
    )
