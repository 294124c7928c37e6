"""Ultralytics, offline: training (tiny models from an architecture for the demo and the tests; fine-tuning the
current model in a training round) and evaluation on a held-out split.

Plots are off (they may fetch a font), AMP is off (its check downloads a model), and Ultralytics' own
experiment-tracker callbacks are off; torch's CPU thread count is restored after every call into Ultralytics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.errors import CurateError, ExitCode, ModelLoadError
from curation.training.splits import primary_label

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from store.records import LabeledExample


class TrainingError(CurateError):
    """Ultralytics training failed (bad dataset, out of memory, ...) or the model cannot be fine-tuned here."""

    exit_code = ExitCode.TRAINING


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    metrics: dict[str, float]


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
    from curation.scoring.runtime import load_yolo, torch_threads

    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_yolo(base, seed=seed)
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
    try:
        with torch_threads(), _integrations_off():  # Ultralytics' trainer lowers the thread count for its own use
            metrics = model.train(**args)
    except Exception as exc:
        raise TrainingError(f"training on {data} failed: {type(exc).__name__}: {exc}") from exc
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
# Evaluation


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
    val_examples: Sequence[LabeledExample] = (),
) -> dict[str, float]:
    """Validate ``weights`` on the held-out split; returns plain numbers (accuracy, or mAP/precision/recall/f1).

    Classification accuracy is computed by curate itself (see ``accuracy_by_name``) on ``val_examples``;
    detection and segmentation use Ultralytics' validator on ``data`` (a ``data.yaml``).
    """
    return evaluate_models([weights], data, task, imgsz, batch, device, val_examples)[0]


def evaluate_models(
    weights: Sequence[str],
    data: Path,
    task: str,
    imgsz: int,
    batch: int,
    device: str,
    val_examples: Sequence[LabeledExample] = (),
) -> list[dict[str, float]]:
    """``evaluate`` for several models on the same split (candidate and current): classification decodes the
    validation images once for all of them."""
    if task == "classify":
        return [{"accuracy": a} for a in accuracy_by_name(weights, val_examples, imgsz, device)]
    return [_ultralytics_val(w, data, task, imgsz, batch, device) for w in weights]


def _ultralytics_val(weights: str, data: Path, task: str, imgsz: int, batch: int, device: str) -> dict[str, float]:
    from curation.scoring.runtime import load_yolo, torch_threads

    try:
        model = load_yolo(weights)
        with torch_threads():
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
    except ModelLoadError:
        raise
    except Exception as exc:
        raise TrainingError(f"evaluating {weights} on {data} failed: {type(exc).__name__}: {exc}") from exc
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


def accuracy_by_name(
    weights: Sequence[str], examples: Sequence[LabeledExample], imgsz: int, device: str
) -> list[float]:
    """Top-1 accuracy of each model, matching predictions to labels by class *name* (the models may order classes
    differently); an image unreadable now is not counted."""
    import numpy as np

    out = []
    for correct in correct_by_name(weights, examples, imgsz, device):
        valid = correct[~np.isnan(correct)]
        out.append(float(valid.mean()) if len(valid) else float("nan"))
    return out


def correct_by_name(
    weights: Sequence[str], examples: Sequence[LabeledExample], imgsz: int, device: str
) -> list[NDArray[np.float64]]:
    """Per model, per example: 1.0 if its top-1 class *name* is the label, 0.0 if not, NaN for an image unreadable
    now (the per-item scores a paired bootstrap resamples). Images are decoded as scoring decodes them, once for
    all models when their input is the same."""
    import numpy as np
    import torch

    from curation.config import ModelSettings
    from curation.scoring.engine import ScoreJob, decoded_batches, default_workers
    from curation.scoring.runtime import load_model

    torch_device = torch.device("cuda" if device not in ("cpu", "mps") and torch.cuda.is_available() else "cpu")
    runtimes = [load_model(ModelSettings(path=w, imgsz=imgsz), torch_device, "fp32") for w in weights]
    truth = [primary_label("classify", e.labels) for e in examples]
    jobs = [ScoreJob(i, Path(e.path)) for i, e in enumerate(examples)]
    correct: list[NDArray[np.float64]] = [np.full(len(examples), np.nan) for _ in runtimes]
    groups: dict[tuple[str, int], list[int]] = {}  # models that share an input decode it once
    for k, runtime in enumerate(runtimes):
        groups.setdefault((runtime.info.preprocess, runtime.info.imgsz), []).append(k)
    for members in groups.values():
        info = runtimes[members[0]].info
        for batch in decoded_batches(jobs, info, 32, workers=default_workers(None, torch_device)):
            if batch.images is None:
                continue
            for k in members:
                outputs = runtimes[k].infer(batch.images, batch.geometries)
                names = runtimes[k].info.class_names
                for position, output in zip(batch.positions, outputs, strict=True):
                    hit = output.probs is not None and names[int(np.argmax(output.probs))] == truth[position]
                    correct[k][position] = 1.0 if hit else 0.0
    return correct


IOU_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))  # COCO's, as Ultralytics' validator uses


@dataclass(frozen=True)
class ImageStats:
    """One image's detections matched to its labeled boxes (Ultralytics' validator's matching): what mAP is
    computed from, kept per image so that a bootstrap can resample images."""

    tp: NDArray[np.bool_]  # (n_pred, 10): correct at each IoU threshold
    conf: NDArray[np.float64]
    pred_cls: NDArray[np.int64]  # index into the evaluation's class names (-1: a class it does not have)
    target_cls: NDArray[np.int64]


def detection_stats(
    weights: str, examples: Sequence[LabeledExample], class_names: Sequence[str], imgsz: int, device: str
) -> list[ImageStats | None]:
    """Per example (None: unreadable now), the model's detections at validation settings (conf 0.001, NMS IoU
    0.7) matched to the labeled boxes by class *name* and IoU."""
    import numpy as np

    from curation.scoring.runtime import load_yolo, torch_threads

    index = {name: i for i, name in enumerate(class_names)}
    model = load_yolo(weights)
    names = [str(model.names[i]) for i in sorted(model.names)]
    out: list[ImageStats | None] = []
    for e in examples:
        try:
            with torch_threads():
                result = model.predict(
                    e.path, imgsz=imgsz, conf=0.001, iou=0.7, device=device, verbose=False, max_det=300
                )[0]
        except Exception:  # an unreadable image: not counted
            out.append(None)
            continue
        h, w = result.orig_shape
        boxes = result.boxes
        pred = boxes.xyxy.cpu().numpy().astype(np.float64) / [w, h, w, h] if boxes is not None else np.zeros((0, 4))
        conf = boxes.conf.cpu().numpy().astype(np.float64) if boxes is not None else np.zeros(0)
        cls = boxes.cls.cpu().numpy().astype(np.int64) if boxes is not None else np.zeros(0, np.int64)
        pred_cls = np.array([index.get(names[c], -1) for c in cls], dtype=np.int64)
        order = np.argsort(-conf, kind="stable")
        pred, conf, pred_cls = pred[order], conf[order], pred_cls[order]
        lw = float(e.labels.get("width") or e.width or w)
        lh = float(e.labels.get("height") or e.height or h)
        truth = [b for b in e.labels.get("boxes") or [] if b.get("label") in index]
        gt = np.array([[b["x1"] / lw, b["y1"] / lh, b["x2"] / lw, b["y2"] / lh] for b in truth]).reshape(-1, 4)
        target_cls = np.array([index[b["label"]] for b in truth], dtype=np.int64)
        out.append(ImageStats(_match(pred, pred_cls, gt, target_cls), conf, pred_cls, target_cls))
    return out


def _match(
    pred: NDArray[np.float64], pred_cls: NDArray[np.int64], gt: NDArray[np.float64], gt_cls: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Greedy matching in descending confidence, one target per detection per threshold (Ultralytics' rule)."""
    import numpy as np

    thresholds = np.array(IOU_THRESHOLDS)
    correct = np.zeros((len(pred), len(thresholds)), dtype=bool)
    if not len(pred) or not len(gt):
        return correct
    lt = np.maximum(gt[:, None, :2], pred[None, :, :2])
    rb = np.minimum(gt[:, None, 2:], pred[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_g = (gt[:, 2:] - gt[:, :2]).prod(axis=1)
    area_p = (pred[:, 2:] - pred[:, :2]).prod(axis=1)
    iou = inter / (area_g[:, None] + area_p[None, :] - inter + 1e-9)
    iou = iou * (gt_cls[:, None] == pred_cls[None, :])
    matched = np.zeros((len(gt), len(thresholds)), dtype=bool)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, range(len(thresholds))] >= thresholds
        matched[k, range(len(thresholds))] |= correct[j]
    return correct


def map_of(stats: Sequence[ImageStats], metric: str) -> float:
    """mAP50-95 or mAP50 (Ultralytics' ``ap_per_class``) over a set of images (a bootstrap resample)."""
    import numpy as np
    from ultralytics.utils.metrics import ap_per_class

    target = np.concatenate([s.target_cls for s in stats]) if stats else np.zeros(0)
    if not len(target):
        return float("nan")
    tp = np.concatenate([s.tp for s in stats])
    if not len(tp):
        return 0.0
    conf = np.concatenate([s.conf for s in stats])
    pred_cls = np.concatenate([s.pred_cls for s in stats])
    ap = ap_per_class(tp, conf, pred_cls, target)[5]
    if not len(ap):
        return 0.0
    return float(ap[:, 0].mean()) if metric == "map50" else float(ap.mean())


def weights_identity(weights: Path) -> tuple[str, list[str]]:
    """The digest of trained weights (the same as scoring's ``ModelInfo.digest``: identical weights, same version)
    and their class names in the model's own order (Ultralytics orders classification classes by folder name)."""
    import torch

    from curation.scoring.runtime import load_yolo, weights_digest, yolo_class_names

    yolo = load_yolo(weights)
    net = yolo.model
    digest = (
        weights_digest(net) if isinstance(net, torch.nn.Module) else hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    return digest, yolo_class_names(yolo.names)


def training_device(spec: str) -> str:
    """Ultralytics' device string for ``spec``: ``auto`` is the first GPU when there is one, else the CPU."""
    if spec != "auto":
        return spec
    import torch

    return "0" if torch.cuda.is_available() else "cpu"
