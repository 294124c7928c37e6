"""``curate labels import``: labels made elsewhere (a YOLO dataset, a Label Studio JSON export) stored as labeled
items, matched by content id (the SHA-256 of the image bytes): they are never selected again and feed training.

Images the database does not know yet are registered first: the dataset's folder (or ``--images``) is scanned as
a pool, as ``curate score --pool`` would. An item that already has a label keeps it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curation.config import Settings
from curation.jobs.common import current_or_fail
from curation.reports import Report
from curation.scoring.pool import content_id, resolve_local_pool, scan_pool
from curation.training.imports import read_foreign
from store import Store
from store.records import ImportedLabel


@dataclass
class LabelImportReport(Report):
    source: str
    kind: str
    labels: int  # labeled images in the source
    matched: int = 0  # images the database knew already
    new: int = 0  # images registered into a pool by this import
    unmatched: int = 0  # images that could not be found or read (or a curate task whose item is not here)
    imported: int = 0  # labels stored
    already_labeled: int = 0  # items that had a label already (kept)
    unknown_classes: dict[str, int] = field(default_factory=dict)  # labels outside the current model's classes
    pool: str | None = None
    unmatched_examples: list[str] = field(default_factory=list)


def import_labels(store: Store, settings: Settings, path: Path, *, images: Path | None = None) -> LabelImportReport:
    current = current_or_fail(store)
    dataset = read_foreign(path, current.task, images)
    report = LabelImportReport(dataset.source, dataset.kind, len(dataset.labels))
    hashed: list[tuple[int, str]] = []  # (row index, content id)
    for k, row in enumerate(dataset.labels):
        if row.content_id:
            hashed.append((k, row.content_id))
        elif row.image is not None:
            try:
                hashed.append((k, content_id(row.image)))
            except OSError:
                _unmatched(report, row.reference)
        else:
            _unmatched(report, row.reference)
    wanted = sorted({cid for _, cid in hashed})
    known = store.items.by_content(wanted)
    if dataset.root is not None and any(cid not in known for _, cid in hashed):
        source = resolve_local_pool(dataset.root)  # --images: a folder on disk
        scan_pool(
            store,
            source,
            tuple(settings.pool.extensions),
            allow_outside_root=settings.pool.allow_outside_root,
            max_pixels=settings.pool.max_pixels,
        )
        report.pool = str(source.location)
    items = store.items.by_content(wanted)
    rows: list[ImportedLabel] = []
    classes = set(current.class_names)
    unknown: Counter[str] = Counter()
    for k, cid in hashed:
        row = dataset.labels[k]
        if cid not in items:
            _unmatched(report, row.reference)
            continue
        if cid in known:
            report.matched += 1
        else:
            report.new += 1
        for name in _label_names(row.labels):
            if name not in classes:
                unknown[name] += 1
        rows.append(ImportedLabel(items[cid], row.labels, dataset.source, row.annotator, row.annotated_at))
    report.imported, report.already_labeled = store.labels.add_imported(rows)
    report.unknown_classes = dict(sorted(unknown.items()))
    return report


def _label_names(labels: dict[str, object]) -> list[str]:
    classes = labels.get("classes")
    if isinstance(classes, list):
        return [str(c) for c in classes]
    boxes = labels.get("boxes")
    return [str(b.get("label")) for b in boxes if isinstance(b, dict)] if isinstance(boxes, list) else []


def _unmatched(report: LabelImportReport, reference: str) -> None:
    report.unmatched += 1
    if len(report.unmatched_examples) < 5:
        report.unmatched_examples.append(reference)
