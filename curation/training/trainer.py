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
    differently). Images are decoded as scoring decodes them, once for all models when their input is the same;
    an image unreadable now is not counted."""
    import numpy as np
    import torch

    from curation.config import ModelSettings
    from curation.scoring.engine import ScoreJob, decoded_batches, default_workers
    from curation.scoring.runtime import load_model

    torch_device = torch.device("cuda" if device not in ("cpu", "mps") and torch.cuda.is_available() else "cpu")
    runtimes = [load_model(ModelSettings(path=w, imgsz=imgsz), torch_device, "fp32") for w in weights]
    truth = [primary_label("classify", e.labels) for e in examples]
    jobs = [ScoreJob(i, Path(e.path)) for i, e in enumerate(examples)]
    correct = [0] * len(runtimes)
    total = [0] * len(runtimes)
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
                    total[k] += 1
                    if output.probs is not None and names[int(np.argmax(output.probs))] == truth[position]:
                        correct[k] += 1
    return [c / t if t else float("nan") for c, t in zip(correct, total, strict=True)]


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
