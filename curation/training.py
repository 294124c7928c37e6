"""Training with Ultralytics, offline: from an architecture (demo, tests) or fine-tuning current weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import CurateError


class TrainingError(CurateError):
    """Ultralytics training failed (bad dataset, out of memory, ...)."""


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
    from ultralytics import YOLO

    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLO(str(base))
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
