"""Training with Ultralytics, offline: tiny models from an architecture (demo, tests), and fine-tuning the current
model on the labeled items, with a fixed held-out split, evaluation of candidate *and* current model on it, and
registration in the store.

A round (``train_round``):

1. the labeled items (latest non-cancelled annotation each) get a train/val split — assigned once per item from a
   hash of its content id (``val_fraction``, seeded) and never changed, so held-out items stay held out across
   rounds; a class with two or more labeled items always gets at least one validation item;
2. they are exported as an Ultralytics dataset (class folders, or YOLO labels + ``data.yaml``) made of symlinks;
3. the current model is fine-tuned; candidate and current are evaluated on the same validation split;
4. the weights are saved under ``models_dir`` (written to a temporary name, then renamed) and the version is
   registered with its metrics, parent, dataset hash and time in one transaction — promoted to current in the
   same transaction only if it beats the current model (``train.promote: auto``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import Settings
from curation.errors import CurateError, ExitCode
from curation.faults import checkpoint
from curation.progress import NullProgress, Progress
from store import Store
from store.records import LabeledExample, ModelVersionRecord, TrainedModel

BACKGROUND = "__background__"  # detection images labeled with no box: negatives for the detector


class TrainingError(CurateError):
    """Ultralytics training failed (bad dataset, out of memory, ...) or the model cannot be fine-tuned here."""

    exit_code = ExitCode.TRAINING


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    metrics: dict[str, float]


def _prepare() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def train_ultralytics(
    base: str | Path,
    data: Path,
    out_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str = "cpu",
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``base`` (an architecture .yaml or .pt weights) on ``data`` and return the best weights.

    ``data`` is a classification folder (``train/``, ``val/``) or a detection/segmentation ``data.yaml``.
    Plots are off (they may fetch a font) and AMP is off (its check downloads a model).
    """
    _prepare()
    import torch

    from curation.scoring.runtime import _import_yolo

    yolo_cls = _import_yolo()
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = yolo_cls(str(base))
    args: dict[str, Any] = {
        "data": str(data),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "workers": 0,
        "plots": False,
        "amp": False,
        "project": str(out_dir.resolve()),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
        "seed": seed,
        "deterministic": True,
    }
    args.update(options or {})
    threads = torch.get_num_threads()
    try:
        with _integrations_off():
            metrics = model.train(**args)
    except Exception as exc:
        raise TrainingError(f"training on {data} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)  # Ultralytics' trainer lowers it for its own use
    weights = out_dir / "train" / "weights" / "best.pt"
    if not weights.is_file():
        weights = out_dir / "train" / "weights" / "last.pt"
    if not weights.is_file():
        raise TrainingError(f"training on {data} produced no weights in {out_dir}")
    values = getattr(metrics, "results_dict", {}) or {}
    return TrainResult(weights, {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)})


_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "neptune", "raytune", "tensorboard", "wandb")


@contextmanager
def _integrations_off() -> Iterator[None]:
    """Switch Ultralytics' own experiment-tracker callbacks off for one training, in memory only.

    If MLflow, W&B, Comet... are installed, Ultralytics logs every training to them on its own (MLflow even creates
    a database in the working directory). curate logs to MLflow itself when configured; nothing else should
    happen, and the user's Ultralytics settings file must not change.
    """
    from ultralytics.utils import SETTINGS

    saved = {key: SETTINGS.get(key) for key in _INTEGRATIONS if key in SETTINGS}
    for key in saved:
        dict.__setitem__(SETTINGS, key, False)  # bypasses the settings file's save-on-write
    try:
        yield
    finally:
        for key, value in saved.items():
            dict.__setitem__(SETTINGS, key, value)


def train_from_scratch(
    arch: str,
    data: Path,
    out_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Path:
    """A tiny model from an architecture yaml, for the demo and the tests. Returns the weights path."""
    return train_ultralytics(
        arch, data, out_dir, epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, options=options
    ).weights


# --------------------------------------------------------------------------------------------------------------------
# Splits and dataset export


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
    """Split assignment for every example: existing ones kept, new ones drawn once and recorded."""
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


@dataclass
class ExportedDataset:
    data: Path  # the folder (classify) or data.yaml (detect/segment) to hand to Ultralytics
    n_train: int
    n_val: int
    dataset_hash: str
    skipped_labels: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(src, dst)


def export_dataset(
    examples: list[LabeledExample], splits: dict[int, str], task: str, class_names: list[str], out_dir: Path
) -> ExportedDataset:
    """Write an Ultralytics dataset of symlinks to the pool files. Labels not among the model's classes are
    skipped (counted); detection coordinates are normalised by the image size the annotation was made on."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    known = set(class_names)
    skipped: Counter[str] = Counter()
    per_class: dict[str, dict[str, int]] = {c: {"train": 0, "val": 0} for c in class_names}
    lines: list[str] = []
    counts = {"train": 0, "val": 0}
    for e in examples:
        split = splits[e.item_id]
        src = Path(e.path)
        if not src.is_file():
            skipped["missing file"] += 1
            continue
        name = e.content_id + (src.suffix.lower() or ".jpg")
        if task == "classify":
            label = primary_label(task, e.labels)
            if label not in known:
                skipped[label] += 1
                continue
            _link(src, out_dir / split / label / name)
            per_class[label][split] += 1
            lines.append(f"{e.content_id} {split} {label}")
        else:
            rows = _yolo_rows(task, e, class_names, skipped)
            if rows is None:
                continue
            _link(src, out_dir / "images" / split / name)
            (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "labels" / split / (e.content_id + ".txt")).write_text("".join(r + "\n" for r in rows))
            for r in rows:
                per_class[class_names[int(r.split()[0])]][split] += 1
            lines.append(f"{e.content_id} {split} " + "|".join(rows))
        counts[split] += 1
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    data = out_dir
    if task != "classify":
        names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(class_names))
        data = out_dir / "data.yaml"
        data.write_text(f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return ExportedDataset(data, counts["train"], counts["val"], digest, skipped, per_class)


def _yolo_rows(task: str, e: LabeledExample, class_names: list[str], skipped: Counter[str]) -> list[str] | None:
    width = float(e.labels.get("width") or e.width or 0)
    height = float(e.labels.get("height") or e.height or 0)
    shapes = e.labels.get("polygons") if task == "segment" else e.labels.get("boxes")
    if shapes and not (width and height):
        skipped["unknown image size"] += 1
        return None
    index = {name: i for i, name in enumerate(class_names)}
    rows = []
    for shape in shapes or []:
        label = shape.get("label")
        if label not in index:
            skipped[str(label)] += 1
            continue
        if task == "segment":
            pts = [f"{min(max(x / width, 0), 1):.6f} {min(max(y / height, 0), 1):.6f}" for x, y in shape["points"]]
            if len(pts) >= 3:
                rows.append(f"{index[label]} " + " ".join(pts))
        else:
            x1, y1 = max(shape["x1"], 0.0) / width, max(shape["y1"], 0.0) / height
            x2, y2 = min(shape["x2"], width) / width, min(shape["y2"], height) / height
            if x2 > x1 and y2 > y1:
                rows.append(f"{index[label]} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Evaluation


METRIC_KEYS = {
    "accuracy": "metrics/accuracy_top1",
    "map50_95": "metrics/mAP50-95(B)",
    "map50": "metrics/mAP50(B)",
}


def resolve_metric(metric: str, task: str) -> str:
    if metric == "auto":
        return "accuracy" if task == "classify" else "map50_95"
    if metric == "accuracy" and task != "classify":
        raise TrainingError(f"train.metric 'accuracy' is for classification; use map50_95, map50 or f1 for {task}")
    if metric != "accuracy" and task == "classify":
        raise TrainingError(f"train.metric {metric!r} is for detection; use accuracy for classification")
    return metric


def evaluate(
    weights: str,
    data: Path,
    task: str,
    imgsz: int,
    batch: int,
    device: str,
    val_examples: list[LabeledExample] | None = None,
) -> dict[str, float]:
    """Validate ``weights`` on the held-out split; returns plain numbers (accuracy, or mAP/precision/recall/f1).

    Classification accuracy is computed by curate itself, matching predicted and labeled class *names* with
    curate's own preprocessing, so models whose class order differs are compared fairly; detection and
    segmentation use Ultralytics' validator on the exported ``data.yaml``.
    """
    if task == "classify":
        return {"accuracy": _accuracy_by_name(weights, val_examples or [], imgsz, device)}
    _prepare()
    import torch

    from curation.scoring.runtime import _import_yolo

    yolo_cls = _import_yolo()
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = yolo_cls(weights)
        result = model.val(
            data=str(data),
            split="val",
            imgsz=imgsz,
            batch=batch,
            device=device,
            plots=False,
            workers=0,
            verbose=False,
            save_json=False,
        )
    except Exception as exc:
        raise TrainingError(f"evaluating {weights} on {data} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(threads)
    values = {str(k): float(v) for k, v in (getattr(result, "results_dict", {}) or {}).items()}
    suffix = "(M)" if task == "segment" and "metrics/mAP50-95(M)" in values else "(B)"
    p = values.get(f"metrics/precision{suffix}", 0.0)
    r = values.get(f"metrics/recall{suffix}", 0.0)
    return {
        "map50_95": values.get(f"metrics/mAP50-95{suffix}", float("nan")),
        "map50": values.get(f"metrics/mAP50{suffix}", float("nan")),
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
    }


def _accuracy_by_name(weights: str, examples: list[LabeledExample], imgsz: int, device: str) -> float:
    """Top-1 accuracy, matching predictions to labels by class *name* (the two models may order classes
    differently); images are decoded exactly as scoring decodes them."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from curation.config import ModelSettings
    from curation.scoring.engine import PoolDataset, collate
    from curation.scoring.runtime import load_model

    runtime = load_model(
        ModelSettings(path=weights, imgsz=imgsz),
        torch.device("cuda" if device not in ("cpu", "mps") and torch.cuda.is_available() else "cpu"),
        "fp32",
    )
    names = runtime.info.class_names
    truth = [primary_label("classify", e.labels) for e in examples]
    # validation images were read once already when they were scored: no size limit here
    dataset = PoolDataset([Path(e.path) for e in examples], runtime.info.preprocess, runtime.info.imgsz, 10**9)
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=32, collate_fn=collate):
        if batch["images"] is None:
            continue  # unreadable now: not counted
        outputs = runtime.infer(batch["images"], batch["geometries"])
        for position, output in zip(batch["positions"], outputs, strict=True):
            total += 1
            if output.probs is not None and names[int(np.argmax(output.probs))] == truth[position]:
                correct += 1
    return correct / total if total else float("nan")


# --------------------------------------------------------------------------------------------------------------------
# A training round


@dataclass
class TrainReport:
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

    def summary(self) -> dict[str, Any]:
        return {
            "trained": self.trained,
            "reason": self.reason,
            "parent": self.parent,
            "version": self.version,
            "weights": self.weights,
            "promoted": self.promoted,
            "metric": self.metric,
            "candidate_metrics": self.candidate_metrics,
            "current_metrics": self.current_metrics,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "dataset_hash": self.dataset_hash,
            "skipped_labels": self.skipped_labels,
            "mlflow_run": self.mlflow_run,
            "warnings": self.warnings,
        }


def models_dir(settings: Settings) -> Path:
    if settings.train.models_dir:
        return Path(settings.train.models_dir).expanduser().resolve()
    from store.urls import sqlite_file

    database = sqlite_file(settings.db)
    if database is not None:
        return database.expanduser().resolve().parent / "curate-models"
    return Path("curate-models").resolve()


def _lineage(version: str) -> str:
    stem, _, tail = version.rpartition("-")
    return stem if stem and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail) else version


def coverage_problem(dataset: ExportedDataset, task: str) -> str | None:
    """Ultralytics needs every class in both splits for classification, and some validation data for all."""
    if dataset.n_train == 0 or dataset.n_val == 0:
        return f"not enough labeled items yet ({dataset.n_train} train, {dataset.n_val} validation)"
    if task == "classify":
        missing = [c for c, n in dataset.per_class.items() if n["train"] == 0 or n["val"] == 0]
        if missing:
            return (
                "classification training needs at least one labeled example of every class in both the training "
                f"and the validation split; missing for: {', '.join(missing)}"
            )
    return None


def train_round(
    store: Store,
    settings: Settings,
    current: ModelVersionRecord,
    *,
    progress: Progress | None = None,
) -> TrainReport:
    """Fine-tune ``current`` on the labeled items; register the result, promoted only if it is better."""
    progress = progress or NullProgress()
    cfg = settings.train
    task = current.task
    metric = resolve_metric(cfg.metric, task)
    if current.format != "ultralytics":
        raise TrainingError(
            f"the current model {current.version} is a {current.format} model; curate fine-tunes Ultralytics "
            "models only (fine-tune it elsewhere, then `curate models promote` or pass --model)"
        )
    base = current.weights_path or current.source
    if not base or not (Path(base).is_file() or base.endswith((".yaml", ".yml"))):
        raise TrainingError(f"the weights of the current model {current.version} are not available at {base!r}")
    examples = store.labels.examples(task)
    if not examples:
        return TrainReport(False, "no labeled items yet: pull annotations first", parent=current.version)
    splits = assign_splits(store, examples, task, cfg.val_fraction, cfg.seed)
    root = models_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=root))
    try:
        dataset = export_dataset(examples, splits, task, current.class_names, work / "dataset")
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
        imgsz = cfg.imgsz or current.imgsz
        device = training_device(cfg.device)
        progress.start(f"fine-tuning {current.version} on {dataset.n_train} items ({cfg.epochs} epochs)", None)
        try:
            result = train_ultralytics(
                base,
                dataset.data,
                work / "run",
                epochs=cfg.epochs,
                imgsz=imgsz,
                batch=cfg.batch_size,
                device=device,
                seed=cfg.seed,
                options=dict(cfg.options),
            )
        finally:
            progress.finish()
        progress.start("evaluating candidate and current model on the held-out split", None)
        try:
            val = [e for e in examples if splits.get(e.item_id) == "val"]
            report.candidate_metrics = evaluate(
                str(result.weights), dataset.data, task, imgsz, cfg.batch_size, device, val
            )
            report.current_metrics = evaluate(base, dataset.data, task, imgsz, cfg.batch_size, device, val)
        finally:
            progress.finish()
        candidate, incumbent = report.candidate_metrics[metric], report.current_metrics[metric]
        if cfg.promote == "always":
            promote, why = True, "promoted (train.promote: always)"
        elif cfg.promote == "never":
            promote, why = False, "kept as candidate (train.promote: never)"
        elif candidate > incumbent + cfg.min_delta:
            promote, why = True, f"promoted: {metric} {candidate:.4f} > {incumbent:.4f} (current)"
        else:
            promote, why = (
                False,
                (
                    f"kept as candidate: {metric} {candidate:.4f} does not beat {incumbent:.4f} (current)"
                    + (f" by more than {cfg.min_delta}" if cfg.min_delta else "")
                ),
            )
        digest, version, weights = _save_weights(result.weights, root, _lineage(current.version))
        checkpoint("train-after-weights-saved")
        twin = store.models.by_digest(digest)
        if twin is not None:  # deterministic training on unchanged labels reproduces a registered model
            report.reason = f"not registered: the fine-tuned weights are identical to {twin.version}"
            report.version = twin.version
            return report
        store.models.set_metrics(current.id, metric, incumbent, report.current_metrics)
        mv = store.models.register_trained(
            TrainedModel(
                version=version,
                weights_path=str(weights),
                digest=digest,
                format="ultralytics",
                task=task,
                class_names=_class_names(weights) or current.class_names,
                imgsz=imgsz,
                parent_id=current.id,
                metric_name=metric,
                metric_value=candidate,
                metrics={**report.candidate_metrics, "train": result.metrics, "epochs": cfg.epochs},
                dataset_hash=dataset.dataset_hash,
                n_labeled=len(examples),
                note=why,
            ),
            promote=promote,
        )
        checkpoint("train-after-register")
        report.trained, report.reason, report.promoted = True, why, promote
        report.version, report.weights = mv.version, str(weights)
        if settings.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            from curation.integrations.mlflow import log_training

            try:
                report.mlflow_run = log_training(settings, report, weights, current.version)
            except CurateError as exc:  # the version is registered; losing the MLflow copy is not fatal
                report.warnings.append(str(exc))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def training_device(spec: str) -> str:
    """Ultralytics' device string for ``spec``: ``auto`` is the first GPU when there is one, else the CPU."""
    if spec != "auto":
        return spec
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def _class_names(weights: Path) -> list[str] | None:
    """Class names in the trained model's own order (Ultralytics orders classification classes by folder name)."""
    from curation.scoring.runtime import _import_yolo

    try:
        names = _import_yolo()(str(weights)).names
    except Exception:  # pragma: no cover - the weights were just written by Ultralytics
        return None
    return [str(names[i]) for i in range(len(names))] if isinstance(names, dict) else list(names)


def _save_weights(trained: Path, root: Path, lineage: str) -> tuple[str, str, Path]:
    """Copy the weights into ``root`` under their version name, atomically. Returns digest, version, path."""
    import torch

    from curation.scoring.runtime import _import_yolo, weights_digest

    net = _import_yolo()(str(trained)).model
    digest = (
        weights_digest(net) if isinstance(net, torch.nn.Module) else hashlib.sha256(trained.read_bytes()).hexdigest()
    )
    version = f"{lineage}-{digest[:12]}"
    target = root / f"{version}.pt"
    if not target.exists():
        tmp = root / f".{version}.pt.tmp"
        shutil.copyfile(trained, tmp)
        os.replace(tmp, target)
    return digest, version, target
