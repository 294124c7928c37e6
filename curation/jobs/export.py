"""``curate export``: the labeled set as an Ultralytics dataset with a manifest, to take away (DVC, another trainer).

The dataset is written by training's own exporter (``curation.training.dataset.export_dataset``), so the hash it
reports is the one training computes; ``--model-version V`` writes exactly the items, splits and labels V was
trained on (recorded with V in the registry) and checks the hash against V's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from curation.config import Settings
from curation.errors import ExportError, UnknownReferenceError
from curation.jobs.common import current_or_fail
from curation.jobs.remote import remote_bytes
from curation.reports import Report
from curation.training.dataset import LINK_MODES, MANIFEST, export_dataset, write_manifest
from curation.training.resolve import labeled_examples
from curation.training.splits import assign_splits
from curation.training.testset import TEST_SPLIT, split_test
from store import Store
from store.records import LabeledExample

EXPORT_INFO = "curate-export.json"


@dataclass
class ExportReport(Report):
    out: Path
    data: Path  # what to hand to Ultralytics: the folder (classify) or its data.yaml
    manifest: Path
    task: str
    model_version: str
    class_names: list[str]
    n_train: int
    n_val: int
    dataset_hash: str
    link: str
    skipped_labels: dict[str, int] = field(default_factory=dict)
    n_test: int = 0  # test-set items (split test, evaluation only; not in the dataset hash)
    trained_hash: str | None = None  # with --model-version: the hash the registry holds for it


def export(
    store: Store, settings: Settings, out: Path, *, link: str = "copy", model_version: str | None = None
) -> ExportReport:
    """Write the labeled set (or what trained ``model_version``) under ``out`` as an Ultralytics dataset, with
    ``manifest.csv`` and ``curate-export.json``. ``out`` must be absent, empty, or an earlier export (replaced).
    The current set is split as training splits it (``train.val_fraction``, ``train.seed``; splits once drawn are
    kept), so an export of it holds out exactly what the next round holds out."""
    if link not in LINK_MODES:
        raise ExportError(f"unknown link mode {link!r}; expected one of: {', '.join(LINK_MODES)}")
    out = out.expanduser().resolve()
    _check_target(out)
    trained_hash: str | None = None
    if model_version:
        mv = store.models.get(model_version)
        if mv is None:
            raise UnknownReferenceError(f"no model version {model_version!r} in {store.display_url}")
        if mv.trained_at is None:
            raise ExportError(f"{mv.version} was not trained by curate: there is no training set to export")
        rows = store.labels.trained_on(mv.id)
        if not rows:
            raise ExportError(
                f"{mv.version} was trained before curate recorded training sets (the registry holds "
                "only its dataset hash): export the current labeled set instead"
            )
        parent = store.models.by_id(mv.parent_id) if mv.parent_id is not None else None
        recorded = (mv.metrics or {}).get("dataset_classes")  # the round's classes (grown by allow_new_classes)
        class_names = [str(c) for c in recorded] if isinstance(recorded, list) else (parent or mv).class_names
        task, version = mv.task, mv.version
        trained_hash = mv.dataset_hash
        rows = rows + store.labels.trained_on_base(mv.id)  # train.base_dataset images: label source "base"
        examples: list[LabeledExample] = [e for e, _ in rows]
        splits = {e.item_id: split for e, split in rows}
    else:
        current = current_or_fail(store)
        task, class_names, version = current.task, current.class_names, current.version
        examples = labeled_examples(store, task, settings.pull.resolve, settings.pull.unchanged_predictions)
        if not examples:
            raise ExportError("no labeled items yet: pull annotations first (curate pull)")
        training, tests = split_test(examples, store.selections.test_items())  # the test set: split test
        splits = assign_splits(store, training, task, settings.train.val_fraction, settings.train.seed)
        splits.update({e.item_id: TEST_SPLIT for e in tests})
        examples = training + tests
    try:
        dataset = export_dataset(
            examples,
            splits,
            task,
            class_names,
            out,
            link_mode=link,
            verify=True,
            portable=True,
            fetch=remote_bytes(settings),
        )
        if model_version:
            missing = dataset.skipped_labels.get("missing file", 0)
            if missing:
                raise ExportError(f"{missing} of the files {version} was trained on are missing: cannot export it")
            if dataset.dataset_hash != trained_hash:
                raise ExportError(
                    f"the exported data hashes to {dataset.dataset_hash[:12]}, not to {version}'s "
                    f"{(trained_hash or '?')[:12]}: its recorded training set does not reproduce it"
                )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half export (it would look like a foreign folder next time)
        raise
    manifest = write_manifest(dataset, out)
    report = ExportReport(
        out=out,
        data=dataset.data,
        manifest=manifest,
        task=task,
        model_version=version,
        class_names=list(class_names),
        n_train=dataset.n_train,
        n_val=dataset.n_val,
        dataset_hash=dataset.dataset_hash,
        n_test=dataset.n_test,
        link=link,
        skipped_labels=dict(dataset.skipped_labels),
        trained_hash=trained_hash,
    )
    info = {k: v for k, v in report.summary().items() if k not in ("out", "data", "manifest")}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return report


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier export: ``out`` is emptied before writing."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / MANIFEST).is_file() and (out / EXPORT_INFO).is_file()):
        raise ExportError(f"--out {out} is not empty and not an earlier curate export: choose a new folder")
    if out.is_dir():
        shutil.rmtree(out)
