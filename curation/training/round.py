"""A training round: fine-tune the current model on the labeled items and register the result, promoted only if
it is better.

The steps (``train_round``):

1. the labeled items (latest non-cancelled annotation each) get their fixed train/val split (``splits``); the
   labels of test-set items (``testset``) are set aside: evaluation only;
2. they are exported as an Ultralytics dataset of symlinks (``dataset``, the exporter ``curate export`` uses);
   without enough data the round stops with the reason;
3. the current model is fine-tuned, then candidate and current are evaluated on the same items: the labeled part
   of ``train.eval_dataset``, else of the random test set, else the held-out split;
4. ``decide_promotion`` compares the two (``promotion``);
5. the weights are saved under the models folder (atomically) and the version is registered with its metrics,
   parent, dataset hash, the exported items (split and labels as they were: ``curate export --model-version``)
   and time in one transaction — promoted in that same transaction if step 4 said so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.config import TrainSettings
from curation.faults import checkpoint
from curation.files import atomic_copy
from curation.progress import NullProgress, Progress
from curation.reports import Report
from curation.training.dataset import ExportedDataset, class_folder, coverage_problem, export_dataset, link
from curation.training.promotion import (
    PairedInterval,
    decide_with_interval,
    items_for_half_width,
    mean_metrics,
    paired_bootstrap,
)
from curation.training.reference import load_reference, replay_sample
from curation.training.splits import assign_splits
from curation.training.testset import split_test
from curation.training.trainer import (
    TrainingError,
    TrainResult,
    correct_by_name,
    detection_stats,
    evaluate_models,
    map_of,
    resolve_metric,
    train_ultralytics,
    training_device,
    weights_identity,
)
from store import Store
from store.records import LabeledExample, ModelVersionRecord, TrainedModel

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


TEST_SET_SOURCE = "test set"  # eval_source when the random test set (train.test_set_size) was the evaluation set


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
    base_items: int = 0  # train.base_dataset images replayed in this round
    eval_source: str = "held-out split"  # or train.eval_dataset's path, or "test set" (train.test_set_size)
    n_eval: int = 0  # items both models were evaluated on
    excluded_eval_items: int = 0  # training items left out because they are in the evaluation set
    interval: dict[str, Any] | None = None  # the paired bootstrap (PairedInterval) the promotion read
    new_classes: list[str] = field(default_factory=list)  # train.allow_new_classes: classes this round added
    eval_items_needed: int | None = None  # train.eval_half_width: evaluation items that interval needs
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
    # validated once, before anything is trained: a bad path or format is one error naming its key
    evaluation = (
        load_reference("train.eval_dataset", train.eval_dataset, task, held_out=True) if train.eval_dataset else None
    )
    replayable = (
        load_reference("train.base_dataset", train.base_dataset, task, held_out=False) if train.base_dataset else None
    )
    n_labeled = len(examples)  # what curate loop counts new labels against
    excluded = 0
    held: set[str] = set()
    if evaluation is not None:  # an evaluation item is never trained on, whoever labeled it
        held = {e.content_id for e in evaluation.examples}
        kept = [e for e in examples if e.content_id not in held]
        excluded, examples = len(examples) - len(kept), kept
    test_items = store.selections.test_items()
    examples, test_examples = split_test(examples, test_items)  # the test set's labels: evaluation only
    excluded += len(test_examples)
    held |= {e.content_id for e in test_examples}  # nor replayed from the base set
    if not examples:
        reason = (
            f"only test-set items are labeled ({len(test_examples)}, evaluation only): label selected items too"
            if test_examples
            else "no labeled items yet: pull annotations first"
        )
        return TrainReport(False, reason, parent=current.version)
    splits = assign_splits(store, examples, task, train.val_fraction, train.seed)
    replay: list[LabeledExample] = []
    if replayable is not None:
        pool = [e for e in replayable.examples if e.content_id not in held]
        excluded += len(replayable.examples) - len(pool)
        n_train = sum(1 for e in examples if splits.get(e.item_id) == "train")
        replay = replay_sample(pool, n_train, train.replay_ratio, f"{train.seed}:{current.version}")
        splits.update({e.item_id: "train" for e in replay})
    class_names = list(current.class_names)
    grown: list[str] = []
    if train.allow_new_classes:
        grown = _new_classes(task, class_names, [*examples, *replay])
        class_names += grown
    models_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=models_root))
    try:
        dataset = export_dataset([*examples, *replay], splits, task, class_names, work / "dataset", fetch=fetch)
        report = TrainReport(
            False,
            "",
            parent=current.version,
            metric=metric,
            n_train=dataset.n_train,
            n_val=dataset.n_val,
            dataset_hash=dataset.dataset_hash,
            skipped_labels=dict(dataset.skipped_labels),
            base_items=sum(1 for item in dataset.items if item.example.item_id < 0),
            excluded_eval_items=excluded,
            new_classes=grown,
        )
        if task == "classify" and replay:
            _val_from_base(dataset, work / "dataset")
        problem = coverage_problem(dataset, task)
        if problem:
            report.reason = problem
            return report
        _check_base_weights(current, base)
        imgsz = train.imgsz or current.imgsz
        device = training_device(train.device)
        result = _fine_tune(base, current.version, dataset, work / "run", train, imgsz, device, progress)
        if evaluation is not None:
            eval_examples = evaluation.examples
            eval_data = _eval_dataset(eval_examples, task, class_names, work / "eval")
            report.eval_source = evaluation.path
        elif test_examples:  # the random test set (train.test_set_size): unbiased, unlike the held-out split
            eval_examples, eval_data = test_examples, _eval_dataset(test_examples, task, class_names, work / "eval")
            report.eval_source = TEST_SET_SOURCE
            if len(test_examples) < len(test_items):
                report.warnings.append(
                    f"the test set is {len(test_examples)} of {len(test_items)} items labeled so far: evaluated on "
                    "those (they are served in random draw order, so they are still a random sample)"
                )
        else:
            if test_items:
                report.warnings.append(
                    f"none of the {len(test_items)} test-set items is labeled yet: evaluated on the held-out split"
                )
            eval_examples, eval_data = [e for e in examples if splits.get(e.item_id) == "val"], dataset.data
        progress.start(f"evaluating candidate and current model on {len(eval_examples)} items", None)
        try:
            models = [str(result.weights), base]
            if task == "classify":  # per-item scores once: the accuracies and their paired bootstrap
                correct = correct_by_name(models, eval_examples, imgsz, device)
                report.candidate_metrics, report.current_metrics = ({"accuracy": _nanmean(c)} for c in correct)
                interval = _classification_interval(correct, train)
            else:
                report.candidate_metrics, report.current_metrics = evaluate_models(
                    models, eval_data, task, imgsz, train.batch_size, device, eval_examples
                )
                interval = _detection_interval(models, eval_examples, task, metric, class_names, imgsz, device, train)
        finally:
            progress.finish()
        report.n_eval = interval.n_items if interval else len(eval_examples)
        report.interval = asdict(interval) if interval else None
        if interval is not None and train.eval_half_width:
            needed = items_for_half_width(interval.n_items, interval.candidate, train.eval_half_width)
            report.eval_items_needed = needed
            if needed > interval.n_items:
                report.warnings.append(
                    f"the {metric} interval is ±{(interval.candidate[1] - interval.candidate[0]) / 2:.3f} on "
                    f"{interval.n_items} evaluation items; ±{train.eval_half_width} needs about {needed}"
                )
        candidate, incumbent = report.candidate_metrics[metric], report.current_metrics[metric]
        decision = decide_with_interval(
            metric, candidate, incumbent, interval, policy=train.promote, min_delta=train.min_delta
        )
        saved = _save_weights(result.weights, models_root, _lineage(current.version))
        checkpoint("train-after-weights-saved")
        twin = store.models.by_digest(saved.digest)
        if twin is not None:  # deterministic training on unchanged labels reproduces a registered model
            report.reason = f"not registered: the fine-tuned weights are identical to {twin.version}"
            report.version = twin.version
            return report
        store.models.set_metrics(current.id, metric, incumbent, report.current_metrics)
        extra: dict[str, Any] = {
            "evaluation": {"source": report.eval_source, "n_items": report.n_eval},
            "dataset_classes": class_names,  # the export's class order (curate export --model-version)
        }
        if report.interval:
            extra["interval"] = report.interval
        if replayable is not None:
            extra["base"] = {"dataset": replayable.path, "replayed": report.base_items, "ratio": train.replay_ratio}
        mv = store.models.register_trained(
            TrainedModel(
                version=saved.version,
                weights_path=str(saved.path),
                digest=saved.digest,
                format="ultralytics",
                task=task,
                class_names=saved.class_names or class_names,
                imgsz=imgsz,
                parent_id=current.id,
                metric_name=metric,
                metric_value=candidate,
                metrics={**report.candidate_metrics, "train": result.metrics, "epochs": train.epochs, **extra},
                dataset_hash=dataset.dataset_hash,
                n_labeled=n_labeled,
                note=decision.reason,
                examples=[(item.example, item.split) for item in dataset.items if item.example.item_id >= 0],
                base_examples=[(item.example, item.split) for item in dataset.items if item.example.item_id < 0],
            ),
            promote=decision.promote,
        )
        checkpoint("train-after-register")
        report.trained, report.reason, report.promoted = True, decision.reason, decision.promote
        report.version, report.weights = mv.version, str(saved.path)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _val_from_base(dataset: ExportedDataset, root: Path) -> None:
    """Ultralytics validates a classifier on class folders that must match the training ones: a class only the
    base set has gets one of its base images linked into ``val`` too. That copy only picks Ultralytics' best epoch;
    promotion is decided on the labeled held-out split or ``train.eval_dataset``, never on it, and the dataset hash
    and the recorded training set are unchanged."""
    for label, counts in dataset.per_class.items():
        if counts["train"] == 0 or counts["val"] > 0:
            continue
        first = next((i for i in dataset.items if i.label == label and i.example.item_id < 0), None)
        if first is None:
            continue  # a class without base images: coverage_problem names it
        src = root / first.path
        link(src.resolve(), class_folder(root, "val", label) / Path(first.path).name)
        counts["val"] += 1


def _new_classes(task: str, known: list[str], examples: list[LabeledExample]) -> list[str]:
    """Label names outside ``known``, in order of first appearance (appended after the model's own classes, so a
    detector's existing class indices stay)."""
    seen = dict.fromkeys(known)
    grown: list[str] = []
    for e in examples:
        if task == "classify":
            names = [str(c) for c in e.labels.get("classes") or []][:1]
        else:
            shapes = e.labels.get("polygons") if task == "segment" else e.labels.get("boxes")
            names = [str(s.get("label")) for s in shapes or [] if s.get("label")]
        for name in names:
            if name not in seen:
                seen[name] = None
                grown.append(name)
    return grown


def _eval_dataset(examples: list[LabeledExample], task: str, class_names: list[str], out: Path) -> Path:
    """An evaluation set as an Ultralytics dataset whose ``val`` split is the whole set (detection validates on
    it; classification is scored by curate from the examples)."""
    exported = export_dataset(examples, {e.item_id: "val" for e in examples}, task, class_names, out)
    (out / "images" / "train").mkdir(parents=True, exist_ok=True)
    return exported.data


def _nanmean(values: NDArray[np.float64]) -> float:
    import numpy as np

    valid = values[~np.isnan(values)]
    return float(valid.mean()) if len(valid) else float("nan")


def _bootstrap_options(train: TrainSettings) -> dict[str, Any]:
    return {"resamples": train.bootstrap, "confidence": train.confidence, "seed": train.seed}


def _classification_interval(correct: list[NDArray[np.float64]], train: TrainSettings) -> PairedInterval | None:
    """The paired bootstrap of the accuracy difference over the items both models could read."""
    import numpy as np

    cand, cur = correct
    valid = ~(np.isnan(cand) | np.isnan(cur))
    return paired_bootstrap(int(valid.sum()), mean_metrics(cand[valid], cur[valid]), **_bootstrap_options(train))


def _detection_interval(
    models: list[str],
    examples: list[LabeledExample],
    task: str,
    metric: str,
    class_names: list[str],
    imgsz: int,
    device: str,
    train: TrainSettings,
) -> PairedInterval | None:
    """The paired bootstrap of the mAP difference, resampling images (None: ``train.bootstrap`` 0, or a metric
    without per-image statistics here: segmentation masks, f1)."""
    if train.bootstrap == 0 or not examples or task != "detect" or metric not in ("map50_95", "map50"):
        return None
    stats = [detection_stats(w, examples, class_names, imgsz, device) for w in models]
    pairs = [(a, b) for a, b in zip(*stats, strict=True) if a is not None and b is not None]
    a_stats = [a for a, _ in pairs]
    b_stats = [b for _, b in pairs]
    return paired_bootstrap(
        len(pairs),
        lambda idx: (map_of([a_stats[i] for i in idx], metric), map_of([b_stats[i] for i in idx], metric)),
        **_bootstrap_options(train),
    )


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
