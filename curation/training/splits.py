"""Train/val splits of the labeled items: drawn once per item and never changed, so held-out items stay held out
across rounds (a model is never validated on what an earlier round trained on)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store import Store
    from store.records import LabeledExample

BACKGROUND = "__background__"  # detection images labeled with no box: negatives for the detector


def _unit_hash(content_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{content_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def primary_label(task: str, labels: dict[str, Any]) -> str:
    """The class an item is stratified by: its class, or its first box's (detection), or background."""
    if task == "classify":
        classes = labels.get("classes") or []
        return str(classes[0]) if classes else BACKGROUND
    shapes = labels.get("polygons") if task == "segment" and labels.get("polygons") else labels.get("boxes")
    for shape in shapes or []:
        if shape.get("label"):
            return str(shape["label"])
    return BACKGROUND


def assign_splits(
    store: Store, examples: list[LabeledExample], task: str, val_fraction: float, seed: int
) -> dict[int, str]:
    """Split assignment for every example: existing ones kept, new ones drawn once (from a hash of the content id,
    so the draw does not depend on arrival order) and recorded. A class with two or more labeled items always gets
    at least one validation item."""
    existing = store.labels.splits()
    new = [e for e in examples if e.item_id not in existing]
    assigned: dict[int, str] = {
        e.item_id: ("val" if _unit_hash(e.content_id, seed) < val_fraction else "train") for e in new
    }
    merged = {**existing, **assigned}
    by_class: dict[str, list[LabeledExample]] = {}
    for e in examples:
        by_class.setdefault(primary_label(task, e.labels), []).append(e)
    for members in by_class.values():
        if len(members) < 2 or any(merged.get(m.item_id) == "val" for m in members):
            continue
        fresh = sorted((m for m in members if m.item_id in assigned), key=lambda m: _unit_hash(m.content_id, seed))
        if fresh:  # a class without any held-out item: its newest item with the smallest hash joins val
            merged[fresh[0].item_id] = assigned[fresh[0].item_id] = "val"
    store.labels.add_splits(sorted(assigned.items()))
    return merged
