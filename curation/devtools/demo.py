"""The offline demo: generate a labeled seed set and an unlabeled pool, train a tiny classifier for a few seconds,
then run the real selection on it. Nothing is downloaded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.devtools.local_label_studio import LocalLabelStudio
from curation.devtools.synthetic import make_classification_dataset, make_pool, write_bad_files
from curation.progress import NullProgress, Progress
from curation.training.trainer import train_from_scratch

if TYPE_CHECKING:
    from curation.devtools.local_seaweedfs import LocalSeaweedFS

DEMO_IMGSZ = 64

# Ultralytics settings under which a from-scratch YOLOv8n-cls learns the generated shapes in seconds on a CPU
# (~99 % val top-1 after 5 epochs of 900 images, ~20 s on 2 cores). The defaults suit long runs, not this: the
# RandomResizedCrop of ``scale=0.5`` crops shapes and kept runs near chance, ``nbs=64`` accumulates 4 batches per
# optimizer step, colour jitter (``hsv_*``) made escaping the initial loss plateau a matter of seed luck, and
# ``lr0=0.002`` stalled at chance.
TINY_CLS_OPTIONS = {
    "optimizer": "AdamW",
    "lr0": 0.001,
    "momentum": 0.9,
    "lrf": 1.0,
    "warmup_epochs": 0,
    "warmup_bias_lr": 0.0,
    "nbs": 16,  # = batch: one optimizer step per batch
    "scale": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "fliplr": 0.0,
    "erasing": 0.0,
    "auto_augment": None,
}


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
    epochs: int = 5,
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
        data = make_classification_dataset(root / "seed-labels", n_train=300, n_val=50, size=DEMO_IMGSZ, seed=0)
        weights = train_from_scratch(
            "yolov8n-cls.yaml",
            data,
            root / "model",
            epochs=epochs,
            imgsz=DEMO_IMGSZ,
            batch=16,
            options=TINY_CLS_OPTIONS,
        )
        progress.finish()
    return DemoAssets(root, pool, weights, f"sqlite:///{root / 'curate.db'}")


DEMO_USER = "demo@curate.local"
DEMO_PROJECT = "curate demo queue"


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    api_key: str


def demo_login(root: Path) -> DemoLogin:
    """The demo server's credentials, created once and kept beside its data (a data dir keeps its first token)."""
    import json
    import os
    import secrets

    path = root / "label-studio" / "credentials.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return DemoLogin(data["username"], data["password"], data["api_key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    login = DemoLogin(DEMO_USER, secrets.token_urlsafe(12), secrets.token_hex(20))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"username": login.username, "password": login.password, "api_key": login.api_key}, fh)
    return login


def start_demo_label_studio(root: Path, port: int | None = None) -> tuple[LocalLabelStudio, DemoLogin]:
    """A local Label Studio serving the demo directory, on ``port`` (default 8080, or a free one if taken)."""
    import socket

    from curation.devtools.local_label_studio import start_local_label_studio

    login = demo_login(root)
    if port is None:
        with socket.socket() as probe:
            port = 8080 if probe.connect_ex(("127.0.0.1", 8080)) != 0 else None
    server = start_local_label_studio(
        root,
        port=port,
        data_dir=root / "label-studio" / "data",
        api_key=login.api_key,
        username=login.username,
        password=login.password,
        log_path=root / "label-studio" / "server.log",
    )
    return server, login


DEMO_BUCKET = "curate-demo"
DEMO_PREFIX = "pool/"


def start_demo_seaweedfs(root: Path, pool: Path) -> tuple[LocalSeaweedFS, str]:
    """A local SeaweedFS (its data beside the demo) holding the demo pool — every file under ``pool``, broken ones
    included — in bucket ``curate-demo`` under ``pool/``. Returns the server and the pool's ``s3://`` URI; files
    already there with the same size are not uploaded again."""
    import json
    import socket

    from curation.devtools.local_seaweedfs import start_local_seaweedfs

    data = root / "seaweedfs"
    saved = data / "ports.json"
    ports: list[int] | None = None
    if saved.is_file():  # the same endpoint as last time: Label Studio's storage of the demo project points there
        ports = [int(p) for p in json.loads(saved.read_text())]
        for port in ports:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    ports = None
                    break
    server = start_local_seaweedfs(data, ports=ports)
    saved.write_text(json.dumps(server.ports))
    try:
        client: Any = server.client()
        if DEMO_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=DEMO_BUCKET)
        present = {
            o["Key"]: o["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=DEMO_BUCKET, Prefix=DEMO_PREFIX)
            for o in page.get("Contents", [])
        }
        for path in sorted(p for p in pool.rglob("*") if p.is_file()):
            key = f"{DEMO_PREFIX}{path.relative_to(pool).as_posix()}"
            if present.get(key) != path.stat().st_size:
                content_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
                client.put_object(Bucket=DEMO_BUCKET, Key=key, Body=path.read_bytes(), ContentType=content_type)
    except BaseException:
        server.stop()
        raise
    return server, f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
