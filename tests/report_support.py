"""Building databases worth a report: a pool of real image files, model outputs written through the store, a
selection, a Label Studio queue (the in-memory fake, through curate's own push and pull) and some labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import LabelStudioSettings, StrategySettings
from curation.labelstudio.project import open_project
from curation.labelstudio.pull import pull
from curation.labelstudio.push import push
from store import Store
from store.records import ModelVersionRecord, ScannedFile, ScoredChunk, ScoredItem
from tests.fake_labelstudio import FakeLabelStudio

PROJECT = "report-queue"


def classify_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def detect_result(label: str, size: int = 80) -> list[dict[str, Any]]:
    return [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": size,
            "original_height": size,
            "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rectanglelabels": [label]},
        }
    ]


def label_queue(
    store: Store,
    mv: ModelVersionRecord,
    document_root: Path,
    selection_ids: list[int],
    *,
    n_label: int,
    n_skip: int = 0,
    labels: list[str] | None = None,
) -> FakeLabelStudio:
    """Push the selections to a fake Label Studio project, label ``n_label`` tasks (cycling through
    ``labels``, default the model's classes), skip ``n_skip``, and pull: the store then knows queued, labeled and
    skipped items exactly as after a real pull."""
    ls = FakeLabelStudio()
    project = open_project(store, ls, mv, PROJECT)
    for selection_id in selection_ids:
        store.selections.mark_for_push(selection_id, project.record.id)
    cfg = LabelStudioSettings(project=PROJECT, document_root=str(document_root))
    push(store, ls, mv, project, cfg, StrategySettings(), pool_path=None)
    tasks = [t["id"] for t in ls.project_tasks(project.record.project_id)]
    names = labels or mv.class_names
    for k, task in enumerate(tasks[:n_label]):
        name = names[k % len(names)]
        ls.annotate(task, classify_result(name) if mv.task == "classify" else detect_result(name))
    for task in tasks[n_label : n_label + n_skip]:
        ls.annotate(task, [], cancelled=True)
    pull(store, ls, PROJECT)
    return ls


@dataclass
class World:
    store: Store
    db_url: str
    pool: Path
    root: Path
    item_ids: list[int]
    versions: list[ModelVersionRecord]


def build_world(
    tmp_path: Path,
    *,
    task: str = "classify",
    classes: tuple[str, ...] = ("circle", "square", "triangle"),
    n: int = 40,
    embeddings: bool = True,
    versions: int = 2,
    select: int = 12,
    select_unpushed: int = 4,
    n_label: int = 5,
    n_skip: int = 1,
    push_queue: bool = True,
    renames: dict[int, str] | None = None,
) -> World:
    """A pool of ``n`` real JPEGs scored by ``versions`` model versions (each surer than the one before), a
    selection of ``select`` items pushed and partly labeled, and one of ``select_unpushed`` items kept out of Label
    Studio."""
    from curation.devtools.synthetic import make_pool

    root = tmp_path / "root"
    pool = root / "pool"
    paths = make_pool(pool, n=n, size=80, seed=3)
    for k, name in (renames or {}).items():  # pool file k gets this name
        paths[k] = paths[k].rename(pool / name)
    url = f"sqlite:///{tmp_path / 'curate.db'}"
    store = Store.open(url)
    pool_id = store.pools.get_or_create(str(pool), "directory", str(pool))
    store.pools.apply_scan(
        pool_id, [ScannedFile(p.name, p.stat().st_size, 1, f"{k:032x}", 80, 80) for k, p in enumerate(paths)], []
    )
    known = store.pools.known_paths(pool_id)
    ids = [known[p.name].item_id for p in paths]
    rng = np.random.default_rng(0)
    k = len(classes)
    centres = rng.normal(size=(k, 8)).astype(np.float32) * 3
    truth = rng.integers(0, k, size=n)
    records: list[ModelVersionRecord] = []
    for v in range(versions):
        mv = store.models.register(
            version=f"model-v{v + 1}",
            source=f"m{v + 1}.pt",
            format="ultralytics",
            task=task,
            class_names=list(classes),
            imgsz=64,
            embedding_dim=8 if embeddings else None,
        )
        store.models.set_metrics(mv.id, "accuracy", 0.5 + 0.2 * v, {"accuracy": 0.5 + 0.2 * v, "f1": 0.4 + 0.2 * v})
        sharp = 1.0 + 2.0 * v  # later versions are surer
        chunk = ScoredChunk()
        for item, c in zip(ids, truth, strict=True):
            logits = rng.normal(size=k) + sharp * np.eye(k)[c] * rng.uniform(0.2, 2.0)
            probs = np.exp(logits) / np.exp(logits).sum()
            emb = (centres[c] + rng.normal(size=8)).astype(np.float32) if embeddings else None
            if task == "classify":
                chunk.scored.append(ScoredItem(item, 80, 80, probs=probs.astype(np.float32), embedding=emb))
            else:
                n_boxes = int(rng.integers(1, 3))
                scores = np.tile(probs.astype(np.float32), (n_boxes, 1))
                boxes = np.tile(np.array([[5, 5, 40, 40]], np.float32), (n_boxes, 1))
                chunk.scored.append(
                    ScoredItem(
                        item,
                        80,
                        80,
                        boxes=boxes,
                        box_conf=scores.max(axis=1),
                        box_scores=scores,
                        embedding=emb,
                    )
                )
        run = store.runs.start(mv.id, pool_id, n, "cpu", 8)
        store.runs.write_chunk(run, mv.id, chunk)
        store.runs.finish(run, "completed", 100.0)
        store.models.set_current(mv.id)
        records.append(store.models.get(mv.version))  # type: ignore[arg-type]
    current = records[-1]
    selections = []
    for start, size in ((0, select), (select, select_unpushed)):
        if size:
            selections.append(
                store.selections.record(
                    pool_id=pool_id,
                    model_version_id=current.id,
                    strategy="entropy",
                    options={},
                    budget=size,
                    item_ids=ids[start : start + size],
                    scores=[1.0 - r / 100 for r in range(size)],
                )
            )
    if select and (n_label or n_skip or push_queue):
        label_queue(store, current, root, selections[:1], n_label=n_label, n_skip=n_skip)
    return World(store, url, pool, root, ids, records)
