"""Whether a fine-tuned candidate replaces the current model: a pure decision on the two models' metrics."""

from __future__ import annotations

from dataclasses import dataclass

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
