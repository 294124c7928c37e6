"""Model registry, train/val splits, dataset export and the run lock (store on SQLite and Postgres)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.training.dataset import ExportedDataset, coverage_problem, export_dataset
from curation.training.splits import assign_splits, primary_label
from store import Store
from store.errors import LockHeldError
from store.lock import RunLock
from store.records import LabeledExample, ScannedFile, TrainedModel

REPO = Path(__file__).resolve().parents[1]


def _trained(version: str, parent: int | None, value: float) -> TrainedModel:
    return TrainedModel(
        version=version,
        weights_path=f"/models/{version}.pt",
        digest=version * 4,
        format="ultralytics",
        task="classify",
        class_names=["a", "b"],
        imgsz=64,
        parent_id=parent,
        metric_name="accuracy",
        metric_value=value,
        metrics={"accuracy": value},
        dataset_hash="d" * 64,
        n_labeled=10,
        note="test",
    )


def test_current_model_and_atomic_promotion(db_url: str) -> None:
    store = Store.open(db_url)
    assert store.models.current() is None
    base = store.models.register(
        version="base-1",
        source="/m/base.pt",
        format="ultralytics",
        task="classify",
        class_names=["a", "b"],
        imgsz=64,
        embedding_dim=8,
        digest="f" * 64,
        weights_path="/m/base.pt",
    )
    store.models.set_current(base.id, note="first")
    assert store.models.current().version == "base-1"  # type: ignore[union-attr]
    kept = store.models.register_trained(_trained("cand-1", base.id, 0.4), promote=False)
    assert kept.status == "candidate" and store.models.current().version == "base-1"  # type: ignore[union-attr]
    promoted = store.models.register_trained(_trained("cand-2", base.id, 0.9), promote=True)
    current = store.models.current()
    assert current is not None and current.version == "cand-2" and current.status == "current"
    assert promoted.parent_id == base.id and promoted.metrics == {"accuracy": 0.9}
    statuses = {mv.version: mv.status for mv, _ in store.models.versions()}
    assert statuses == {"base-1": "retired", "cand-1": "candidate", "cand-2": "current"}
    assert store.models.by_digest("f" * 64).version == "base-1"  # type: ignore[union-attr]
    assert store.models.latest_trained().version == "cand-2"  # type: ignore[union-attr]
    store.close()


def _examples(store: Store, labels: dict[str, str]) -> list[LabeledExample]:
    pool = store.pools.get_or_create("/p", "directory", "/p")
    store.pools.apply_scan(pool, [ScannedFile(f"{c}.jpg", 1, 1, c) for c in labels], [])
    ids = store.items.by_content(list(labels))
    return [
        LabeledExample(ids[c], c, f"/p/{c}.jpg", {"task": "classify", "classes": [lab]}, 64, 64)
        for c, lab in labels.items()
    ]


def test_splits_are_fixed_once_and_cover_every_class(db_url: str) -> None:
    store = Store.open(db_url)
    labels = {f"{i:032x}": ("a" if i % 3 else "b") for i in range(60)}
    examples = _examples(store, labels)
    first = assign_splits(store, examples, "classify", 0.2, seed=0)
    n_val = sum(s == "val" for s in first.values())
    assert 5 <= n_val <= 20  # about 20 %
    # more labels arrive: earlier assignments never change
    more = {f"{i:032x}": "c" for i in range(60, 64)}
    examples2 = examples + _examples(store, more)
    second = assign_splits(store, examples2, "classify", 0.2, seed=0)
    assert {k: second[k] for k in first} == first
    # class c has 4 items: at least one of them is held out
    assert any(second[e.item_id] == "val" for e in examples2 if e.labels["classes"] == ["c"])
    assert store.labels.splits() == second
    store.close()


def test_export_classification_and_detection(tmp_path: Path) -> None:
    from PIL import Image

    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (100, 50), (i * 40, 0, 0)).save(path)
        files.append(path)
    cls = [
        LabeledExample(i, f"c{i}", str(p), {"classes": [["x", "y", "x", "zz"][i]]}, 100, 50)
        for i, p in enumerate(files)
    ]
    splits = {0: "train", 1: "train", 2: "val", 3: "val"}
    ds = export_dataset(cls, splits, "classify", ["x", "y"], tmp_path / "cls")
    assert (tmp_path / "cls/train/x/c0.png").is_symlink() and (tmp_path / "cls/val/x/c2.png").exists()
    assert ds.skipped_labels == {"zz": 1} and ds.n_train == 2 and ds.n_val == 1
    assert coverage_problem(ds, "classify") is not None  # y has no validation example

    det = [
        LabeledExample(
            0,
            "d0",
            str(files[0]),
            {"boxes": [{"label": "x", "x1": 10, "y1": 5, "x2": 60, "y2": 45}], "width": 100, "height": 50},
            100,
            50,
        ),
        LabeledExample(1, "d1", str(files[1]), {"boxes": []}, 100, 50),  # background image
    ]
    ds = export_dataset(det, {0: "train", 1: "val"}, "detect", ["x", "y"], tmp_path / "det")
    assert (tmp_path / "det/labels/train/d0.txt").read_text().split() == [
        "0",
        "0.350000",
        "0.500000",
        "0.500000",
        "0.800000",
    ]
    assert (tmp_path / "det/labels/val/d1.txt").read_text() == ""
    assert "names:" in (tmp_path / "det/data.yaml").read_text() and isinstance(ds, ExportedDataset)
    assert primary_label("detect", det[1].labels) == "__background__"
    same = export_dataset(det, {0: "train", 1: "val"}, "detect", ["x", "y"], tmp_path / "det2")
    assert same.dataset_hash == ds.dataset_hash


def _hold_lock(db_url: str, ready: str) -> None:
    store = Store.open(db_url)
    with RunLock(store, command="curate loop (test holder)"):
        Path(ready).write_text(str(os.getpid()))
        time.sleep(30)


@pytest.mark.heavy
def test_run_lock_excludes_a_second_run(db_url: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_registry import _hold_lock; _hold_lock({db_url!r}, {str(ready)!r})"],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120  # a loaded CI machine may take a while to start Python
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the holder did not take the lock (exit code {holder.poll()})"
        store = Store.open(db_url)
        with pytest.raises(LockHeldError) as info, RunLock(store):
            pass
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "curate loop (test holder)" in message and "started" in message
        # the holder dies without releasing: the lock goes with it (Postgres notices the closed connection at once,
        # but "at once" can be a few milliseconds after the process is gone)
        holder.kill()
        holder.wait(10)
        for attempt in range(100):
            try:
                with RunLock(store):
                    break
            except LockHeldError:
                if attempt == 99:
                    raise
                time.sleep(0.1)
        store.close()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_lock_file_sits_beside_the_sqlite_database(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    with RunLock(store, command="x") as lock:
        assert lock.lock_path() == tmp_path / "c.db.lock"
        info = json.loads((tmp_path / "c.db.lock").read_text())
        assert info["pid"] == os.getpid() and info["command"] == "x"
    store.close()
