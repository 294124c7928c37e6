"""Several finished annotations of one item: which one is its label (``pull.resolve``).

- ``latest``: the newest annotation (the default, and what curate did before the rule existed);
- ``majority``: the labels most annotators gave (annotations compared as a whole: the same class, or the same set
  of boxes); a tie goes to the newest of the tied;
- ``ground_truth``: the newest annotation a reviewer marked as ground truth in Label Studio, else the newest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store import Store
    from store.records import LabeledExample

RULES = ("latest", "majority", "ground_truth")


def resolve(annotations: Sequence[LabeledExample], rule: str) -> list[LabeledExample]:
    """One example per item from its annotations (oldest first, as ``Labels.examples(every=True)`` gives them)."""
    if rule not in RULES:
        raise ValueError(f"unknown pull.resolve rule {rule!r}; expected one of: {', '.join(RULES)}")
    by_item: dict[int, list[LabeledExample]] = {}
    for a in annotations:
        by_item.setdefault(a.item_id, []).append(a)
    return [_choose(group, rule) for group in by_item.values()]


def _choose(group: list[LabeledExample], rule: str) -> LabeledExample:
    if rule == "ground_truth":
        marked = [a for a in group if a.ground_truth]
        return (marked or group)[-1]
    if rule == "majority":
        votes: dict[str, list[int]] = {}
        for position, a in enumerate(group):
            votes.setdefault(_key(a), []).append(position)
        # most votes; among equals, the one whose newest annotation is newest
        best = max(votes.values(), key=lambda positions: (len(positions), positions[-1]))
        return group[best[-1]]
    return group[-1]


def _key(a: LabeledExample) -> str:
    """What two annotations must share to count as the same vote: the labels without bookkeeping (image size)."""
    labels = {k: v for k, v in a.labels.items() if k not in ("width", "height")}
    if isinstance(labels.get("classes"), list):
        labels["classes"] = sorted(str(c) for c in labels["classes"])
    return json.dumps(labels, sort_keys=True)


def labeled_examples(store: Store, task: str, rule: str, unchanged: str = "keep") -> list[LabeledExample]:
    """Every labeled item of ``task`` with its label chosen by ``rule`` (``pull.resolve``); with ``unchanged``
    ``exclude`` (``pull.unchanged_predictions``), annotations that are the model's pre-annotation submitted
    unchanged are not candidates (an item with only such annotations has no training example)."""
    if unchanged not in ("keep", "exclude"):
        raise ValueError(f"unknown pull.unchanged_predictions {unchanged!r}; expected keep or exclude")
    if unchanged == "exclude":
        return resolve([e for e in store.labels.examples(task, every=True) if not e.unchanged_prediction], rule)
    if rule == "latest":
        return store.labels.examples(task)
    return resolve(store.labels.examples(task, every=True), rule)
