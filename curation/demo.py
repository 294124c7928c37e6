"""The offline demo: generate a labeled seed set and an unlabeled pool, train a tiny classifier for a few seconds,
then run the real selection on it. Nothing is downloaded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from curation.progress import NullProgress, Progress
from curation.synthetic import make_classification_dataset, make_pool, write_bad_files
from curation.training import train_from_scratch

DEMO_IMGSZ = 64


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    pool: Path
    model: Path
    db_url: str


def prepare_demo(
    root: Path,
    *,
    pool_size: int = 300,
    epochs: int = 25,
    fresh: bool = False,
    progress: Progress | None = None,
) -> DemoAssets:
    """Create (or reuse) the demo pool and model under ``root``."""
    progress = progress or NullProgress()
    root = root.resolve()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    pool = root / "pool"
    if not pool.exists():
        progress.start(f"generating {pool_size} pool images", None)
        make_pool(pool, n=pool_size, size=96, seed=1)
        # a few near-identical frames, as a camera would produce
        for i in range(5):
            src = pool / f"img_{i:05d}.jpg"
            from PIL import Image

            with Image.open(src) as im:
                im.rotate(1, fillcolor=(0, 0, 0)).save(pool / f"burst_{i:05d}.jpg", quality=85)
        write_bad_files(pool / "incoming", size=96)
        progress.finish()
    weights = root / "model" / "train" / "weights" / "best.pt"
    if not weights.is_file():
        progress.start(f"training a tiny classifier for {epochs} epochs", None)
        data = make_classification_dataset(root / "seed-labels", n_train=80, n_val=20, size=DEMO_IMGSZ, seed=0)
        weights = train_from_scratch(
            "yolov8n-cls.yaml",
            data,
            root / "model",
            epochs=epochs,
            imgsz=DEMO_IMGSZ,
            batch=32,
            options={"optimizer": "AdamW", "lr0": 0.001, "erasing": 0.0, "auto_augment": None},
        )
        progress.finish()
    return DemoAssets(root, pool, weights, f"sqlite:///{root / 'curate.db'}")
