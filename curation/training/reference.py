"""Datasets given by path rather than labeled in curate: the model's own training set (``train.base_dataset``),
replayed in every round so the model does not forget, and a trusted evaluation set (``train.eval_dataset``).

Both are Ultralytics datasets (class folders, or a ``data.yaml``) read by ``labels import``'s reader; their images
are not pool items (never scored, never selected), so their examples carry negative item ids. A dataset's held-out
folders (``val``, ``valid``, ``test``) are its evaluation part: the base set leaves them out, the evaluation set
uses only them when it has any — so one dataset can be named as both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from curation.errors import CurateError, ExitCode
from curation.training.imports import SPLIT_FOLDERS, read_foreign
from store.records import LabeledExample

BASE_SOURCE = "base"  # the label source of base examples (manifest, registry)
EVAL_SOURCE = "eval"
HELD_OUT_FOLDERS = SPLIT_FOLDERS - {"train"}


class ReferenceDatasetError(CurateError):
    """``train.base_dataset`` or ``train.eval_dataset`` is missing or not a dataset of the model's task."""

    exit_code = ExitCode.NOT_FOUND


@dataclass(frozen=True)
class ReferenceSet:
    key: str  # the config key that named it
    path: str
    examples: list[LabeledExample]
    class_names: list[str]  # every class its labels use, sorted


def load_reference(key: str, path: str, task: str, *, held_out: bool) -> ReferenceSet:
    """Read the dataset ``key`` names for a model of ``task``: its training part (``held_out=False``) or its
    evaluation part. Validated here, once per round, before any training: a bad path or format is one clear
    error naming the key."""
    from curation.scoring.pool import content_id

    where = Path(path).expanduser()
    if not where.exists():
        raise ReferenceDatasetError(f"{key}: {where} not found")
    if where.is_file() and where.suffix.lower() == ".json":
        raise ReferenceDatasetError(f"{key}: {where} is a Label Studio export; import it with `curate labels import`")
    try:
        dataset = read_foreign(where, task)
    except CurateError as exc:
        raise ReferenceDatasetError(f"{key}: {exc}") from None
    root = dataset.root or where
    rows = [r for r in dataset.labels if r.image is not None]
    unreadable = len(dataset.labels) - len(rows)
    if unreadable:
        raise ReferenceDatasetError(f"{key}: {unreadable} image(s) of {where} cannot be read")
    parted = [(r, r.image, _is_held_out(r.image, root)) for r in dataset.labels if r.image is not None]
    if held_out and any(h for _, _, h in parted):
        chosen = [(r, image) for r, image, h in parted if h]
    elif held_out:
        chosen = [(r, image) for r, image, _ in parted]
    else:
        chosen = [(r, image) for r, image, h in parted if not h]
    if not chosen:
        part = "evaluation" if held_out else "training"
        raise ReferenceDatasetError(f"{key}: {where} has no {part} images")
    offset = 1 if not held_out else 1 + len(rows)  # distinct negative ids for base and evaluation examples
    examples = []
    names: set[str] = set()
    for k, (row, image) in enumerate(chosen):
        try:
            cid = content_id(image)
        except OSError as exc:
            raise ReferenceDatasetError(f"{key}: cannot read {image}: {exc.strerror or exc}") from None
        labels = row.labels
        names.update(_names(labels))
        width, height = labels.get("width"), labels.get("height")
        examples.append(
            LabeledExample(
                -(offset + k),
                cid,
                str(image),
                labels,
                int(width) if width else None,
                int(height) if height else None,
                EVAL_SOURCE if held_out else BASE_SOURCE,
            )
        )
    return ReferenceSet(key, str(where), examples, sorted(names))


def _is_held_out(image: Path, root: Path) -> bool:
    try:
        parts = image.relative_to(root).parts
    except ValueError:
        parts = image.parts
    return any(p.lower() in HELD_OUT_FOLDERS for p in parts[:-1])


def _names(labels: dict[str, object]) -> list[str]:
    classes = labels.get("classes")
    if isinstance(classes, list):
        return [str(c) for c in classes]
    boxes = labels.get("boxes")
    return [str(b.get("label")) for b in boxes if isinstance(b, dict)] if isinstance(boxes, list) else []


def replay_sample(
    base: list[LabeledExample], n_pulled_train: int, ratio: float | None, salt: str
) -> list[LabeledExample]:
    """The base examples a round trains on: all of them (``ratio`` None), else ``round(ratio * n_pulled_train)``
    of them (at most all), the ones with the smallest hash of (``salt``, content id): a seeded draw that changes
    with ``salt`` (the parent version), so successive rounds replay different base images."""
    if ratio is None:
        return list(base)
    k = min(len(base), round(ratio * n_pulled_train))

    def key(e: LabeledExample) -> bytes:
        return hashlib.sha256(f"{salt}:{e.content_id}".encode()).digest()

    chosen = {id(e) for e in sorted(base, key=key)[:k]}
    return [e for e in base if id(e) in chosen]
