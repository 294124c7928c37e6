"""A training round: fine-tune the current model on the labeled items and register the result, promoted only if
it is better.

The steps (``train_round``):

1. the labeled items (latest non-cancelled annotation each) get their fixed train/val split (``splits``);
2. they are exported as an Ultralytics dataset of symlinks (``dataset``, the exporter ``curate export`` uses);
   without enough data the round stops with the reason;
3. the current model is fine-tuned, then candidate and current are evaluated on the same validation split;
4. ``decide_promotion`` compares the two (``promotion``);
5. the weights are saved under the models folder (atomically) and the version is registered with its metrics,
   parent, dataset hash, the exported items (split and labels as they were: ``curate export --model-version``)
   and time in one transaction — promoted in that same transaction if step 4 said so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from curation.config import TrainSettings
from curation.faults import checkpoint
from curation.files import atomic_copy
from curation.progress import NullProgress, Progress
from curation.reports import Report
from curation.training.dataset import ExportedDataset, coverage_problem, export_dataset
from curation.training.promotion import decide_promotion
from curation.training.splits import assign_splits
from curation.training.trainer import (
    TrainingError,
    TrainResult,
    evaluate_models,
    resolve_metric,
    train_ultralytics,
    training_device,
    weights_identity,
)
from store import Store
from store.records import LabeledExample, ModelVersionRecord, TrainedModel


@dataclass
class TrainReport(Report):
    trained: bool
    reason: str
    parent: str | None = None
    version: str | None = None
    weights: str | None = None
    promoted: bool = False
    metric: str | None = None
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    current_metrics: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    dataset_hash: str | None = None
    skipped_labels: dict[str, int] = field(default_factory=dict)
    mlflow_run: str | None = None
    warnings: list[str] = field(default_factory=list)


def models_dir(train: TrainSettings, db_url: str) -> Path:
    """``train.models_dir``, else ``curate-models/`` beside a SQLite database, else in the working directory."""
    if train.models_dir:
        return Path(train.models_dir).expanduser().resolve()
    from store.urls import sqlite_file

    database = sqlite_file(db_url)
    if database is None:
        return Path("curate-models").resolve()
    return database.expanduser().resolve().parent / "curate-models"


def train_round(
    store: Store,
    current: ModelVersionRecord,
    train: TrainSettings,
    models_root: Path,
    *,
    examples: list[LabeledExample] | None = None,
    progress: Progress | None = None,
    fetch: Callable[[LabeledExample], bytes | None] | None = None,
) -> TrainReport:
    """Fine-tune ``current`` on the labeled items (``examples`` if the caller has them already); register the
    result under ``models_root``, promoted only if it is better. The caller holds the run lock: a ``train-*`` work
    folder under ``models_root`` is then a killed round's, and is removed."""
    progress = progress or NullProgress()
    _remove_killed_rounds(models_root)
    task = current.task
    metric = resolve_metric(train.metric, task)
    base = _fine_tunable_weights(current)
    examples = store.labels.examples(task) if examples is None else examples
    if not examples:
        return TrainReport(False, "no labeled items yet: pull annotations first", parent=current.version)
    splits = assign_splits(store, examples, task, train.val_fraction, train.seed)
    models_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=models_root))
    try:
        dataset = export_dataset(examples, splits, task, current.class_names, work / "dataset", fetch=fetch)
        report = TrainReport(
            False,
            "",
            parent=current.version,
            metric=metric,
            n_train=dataset.n_train,
            n_val=dataset.n_val,
            dataset_hash=dataset.dataset_hash,
            skipped_labels=dict(dataset.skipped_labels),
        )
        problem = coverage_problem(dataset, task)
        if problem:
            report.reason = problem
            return report
        _check_base_weights(current, base)
        imgsz = train.imgsz or current.imgsz
        device = training_device(train.device)
        result = _fine_tune(base, current.version, dataset, work / "run", train, imgsz, device, progress)
        val = [e for e in examples if splits.get(e.item_id) == "val"]
        progress.start("evaluating candidate and current model on the held-out split", None)
        try:
            report.candidate_metrics, report.current_metrics = evaluate_models(
                [str(result.weights), base], dataset.data, task, imgsz, train.batch_size, device, val
            )
        finally:
            progress.finish()
        candidate, incumbent = report.candidate_metrics[metric], report.current_metrics[metric]
        decision = decide_promotion(metric, candidate, incumbent, policy=train.promote, min_delta=train.min_delta)
        saved = _save_weights(result.weights, models_root, _lineage(current.version))
        checkpoint("train-after-weights-saved")
        twin = store.models.by_digest(saved.digest)
        if twin is not None:  # deterministic training on unchanged labels reproduces a registered model
            report.reason = f"not registered: the fine-tuned weights are identical to {twin.version}"
            report.version = twin.version
            return report
        store.models.set_metrics(current.id, metric, incumbent, report.current_metrics)
        mv = store.models.register_trained(
            TrainedModel(
                version=saved.version,
                weights_path=str(saved.path),
                digest=saved.digest,
                format="ultralytics",
                task=task,
                class_names=saved.class_names or current.class_names,
                imgsz=imgsz,
                parent_id=current.id,
                metric_name=metric,
                metric_value=candidate,
                metrics={**report.candidate_metrics, "train": result.metrics, "epochs": train.epochs},
                dataset_hash=dataset.dataset_hash,
                n_labeled=len(examples),
                note=decision.reason,
                examples=[(item.example, item.split) for item in dataset.items],
            ),
            promote=decision.promote,
        )
        checkpoint("train-after-register")
        report.trained, report.reason, report.promoted = True, decision.reason, decision.promote
        report.version, report.weights = mv.version, str(saved.path)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_killed_rounds(models_root: Path) -> None:
    if models_root.is_dir():
        for work in models_root.glob("train-*"):
            if work.is_dir() and not work.is_symlink():
                shutil.rmtree(work, ignore_errors=True)


def _fine_tunable_weights(current: ModelVersionRecord) -> str:
    """The current model's weights, if curate can fine-tune them here."""
    if current.format != "ultralytics":
        raise TrainingError(
            f"the current model {current.version} is a {current.format} model; curate fine-tunes Ultralytics "
            "models only (fine-tune it elsewhere, then `curate models promote` or pass --model)"
        )
    base = current.weights_path or current.source
    if not base or not (Path(base).is_file() or base.endswith((".yaml", ".yml"))):
        raise TrainingError(f"the weights of the current model {current.version} are not available at {base!r}")
    return base


def _check_base_weights(current: ModelVersionRecord, base: str) -> None:
    """The base weights must still be the registered ones (``model_files.check_digest``): training would otherwise
    fine-tune, and maybe promote, whatever someone put in their place."""
    from curation.scoring.model_files import check_digest

    digest, _ = weights_identity(Path(base))
    check_digest(current.version, base, current.digest, digest)


def _fine_tune(
    base: str,
    version: str,
    dataset: ExportedDataset,
    out_dir: Path,
    train: TrainSettings,
    imgsz: int,
    device: str,
    progress: Progress,
) -> TrainResult:
    progress.start(f"fine-tuning {version} on {dataset.n_train} items ({train.epochs} epochs)", None)
    try:
        return train_ultralytics(
            base,
            dataset.data,
            out_dir,
            epochs=train.epochs,
            imgsz=imgsz,
            batch=train.batch_size,
            device=device,
            seed=train.seed,
            options=dict(train.options),
        )
    finally:
        progress.finish()


def _lineage(version: str) -> str:
    """A version's name without its digest suffix: fine-tunes of ``shapes-<digest>`` are ``shapes-<digest'>``."""
    stem, _, tail = version.rpartition("-")
    return stem if stem and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail) else version


@dataclass(frozen=True)
class SavedWeights:
    digest: str
    version: str
    path: Path
    class_names: list[str]


def _save_weights(trained: Path, root: Path, lineage: str) -> SavedWeights:
    """Copy the weights into ``root`` under their version name (atomically: a crash leaves no half file)."""
    digest, class_names = weights_identity(trained)
    version = f"{lineage}-{digest[:12]}"
    target = root / f"{version}.pt"
    if not target.exists():
        atomic_copy(trained, target)
    return SavedWeights(digest, version, target, class_names)
