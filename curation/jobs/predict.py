"""``POST /predict`` of ``curate serve``: Label Studio tasks → the current model's pre-annotations.

A task curate already scored with the current model is answered from the store (the model is not loaded). Any
other task's image is located with ``curation.labelstudio.images`` (local files under the document root or the
pool root, or a file on the configured Label Studio itself — nothing else, see there), registered as an item,
and all such images are scored in one batch under the run lock and stored, exactly as ``curate score`` would
have stored them. The answer holds one prediction per task, in request order: the pre-annotation in the
project's labeling-config format, the model version, and ``score`` = 1 − the configured strategy's uncertainty
(Label Studio's convention: a higher score is a surer prediction).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from curation.config import Settings
from curation.errors import ConfigError, LabelStudioError
from curation.jobs.common import current_or_fail, run_lock
from curation.labelstudio.formats import (
    CONTROL_NAME,
    IMAGE_NAME,
    LabelingInterface,
    check_label_config,
    curation_id_of,
    parse_label_config,
    prediction_result,
)
from curation.labelstudio.images import TaskImage, resolve_task_image
from curation.reports import Report
from curation.scoring.pool import content_id, resolve_pool
from curation.selection import FALLBACK_MEASURE, build_strategy, items_uncertainty
from store import Store
from store.records import ModelVersionRecord, ScannedFile

if TYPE_CHECKING:
    from curation.labelstudio.client import LabelStudioAPI
    from curation.scoring.runtime import ModelRuntime

MAX_DOWNLOAD_BYTES = 64 << 20


class ModelCache:
    """The current model's runtime, loaded on the first request that needs it (torch is imported then, not
    before) and loaded again when the registry's current model changes."""

    def __init__(self) -> None:
        self._runtime: ModelRuntime | None = None
        self._version: str | None = None
        self.lock = threading.Lock()

    def runtime(self, store: Store, settings: Settings, mv: ModelVersionRecord) -> ModelRuntime:
        if self._runtime is None or self._version != mv.version:
            from curation.jobs.model import load_runtime

            current = settings.model_copy(
                update={"model": settings.model.model_copy(update={"path": None, "version": None})}
            )
            self._runtime = load_runtime(current, store)
            self._version = mv.version
        return self._runtime

    @property
    def loaded(self) -> bool:
        return self._runtime is not None


@dataclass
class PredictReport(Report):
    model_version: str
    results: list[dict[str, Any]] = field(default_factory=list)
    from_store: int = 0
    scored: int = 0
    unreadable: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Task:
    index: int
    task_id: Any
    content_id: str | None = None
    image: TaskImage | None = None
    problem: str | None = None


def interface_for(label_config: str | None, mv: ModelVersionRecord) -> LabelingInterface:
    """Where the pre-annotation goes in the project's labeling config (curate's own names when none is sent)."""
    if not label_config:
        return LabelingInterface(from_name=CONTROL_NAME, to_name=IMAGE_NAME, data_key=IMAGE_NAME)
    return check_label_config(parse_label_config(label_config), mv.task, mv.class_names)


def predict(
    store: Store,
    settings: Settings,
    tasks: Sequence[dict[str, Any]],
    label_config: str | None,
    *,
    models: ModelCache,
    ls: LabelStudioAPI | None = None,
) -> PredictReport:
    """One prediction per task (see the module docstring). ``ls``: the configured Label Studio, for images it
    serves itself (uploads, cloud storage); without it, or without ``serve.download_dir``, those are refused."""
    mv = current_or_fail(store)
    ui = interface_for(label_config, mv)
    report = PredictReport(model_version=mv.version)
    entries = [_locate(i, task, ui, settings, ls) for i, task in enumerate(tasks)]
    cids = sorted({e.content_id for e in entries if e.content_id})
    items = store.items.by_content(cids)
    stored = store.scores.predictions(mv.id, list(items.values()), len(mv.class_names))
    missing = [e for e in entries if e.content_id and (items.get(e.content_id) not in stored)]
    was_missing = {e.index for e in missing}
    if missing:
        with models.lock:
            report.scored, report.unreadable = _score_missing(store, settings, mv, missing, models)
        items = store.items.by_content(cids)
        stored = store.scores.predictions(mv.id, list(items.values()), len(mv.class_names))
    confidence = _confidence(store, settings, mv, [items[c] for c in cids if c in items])
    min_conf = settings.strategy.detection.conf
    for e in entries:
        item_id = items.get(e.content_id or "")
        pred = stored.get(item_id) if item_id is not None else None
        answer: dict[str, Any] = {"model_version": mv.version, "result": []}
        if pred is None:
            reason = e.problem or "the model gave no usable output for this image"
            report.refused.append({"task": e.task_id, "reason": reason})
            answer["error"] = reason  # Label Studio ignores this key; a direct caller sees why
        else:
            if e.index not in was_missing:
                report.from_store += 1
            answer["result"] = prediction_result(mv.task, pred, mv.class_names, ui, min_conf)
            value = confidence.get(item_id) if item_id is not None else None
            answer["score"] = None if value is None else round(value, 6)
        report.results.append(answer)
    return report


def _locate(
    index: int, task: dict[str, Any], ui: LabelingInterface, settings: Settings, ls: LabelStudioAPI | None
) -> _Task:
    entry = _Task(index, task.get("id"))
    cid = curation_id_of(task)
    raw = task.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cfg = settings.label_studio
    root = resolve_pool(settings.pool.path).root if settings.pool.path else None
    pool_root = root if isinstance(root, Path) else None  # an object-store pool has no files to read here
    image = resolve_task_image(
        data.get(ui.data_key),
        ls_url=cfg.url,
        document_root=cfg.document_root,
        url_prefix=cfg.url_prefix,
        pool_root=pool_root,
    )
    entry.image = image
    if cid:  # a task curate pushed: its content id says which item it is
        entry.content_id = cid
        return entry
    if image.kind == "refused":
        entry.problem = image.reason
        return entry
    if image.kind == "label_studio":
        image = _download(image, settings, ls)
        entry.image = image
        if image.kind == "refused":
            entry.problem = image.reason
            return entry
    if image.path is None:  # pragma: no cover - a local image always has a path
        entry.problem = "no image path"
        return entry
    try:
        entry.content_id = content_id(image.path)
    except OSError as exc:
        entry.problem = f"cannot read the image: {exc.strerror or exc}"
    return entry


def _download(image: TaskImage, settings: Settings, ls: LabelStudioAPI | None) -> TaskImage:
    """A file Label Studio serves itself, kept under ``serve.download_dir`` by content."""
    if not settings.serve.download_dir:
        return TaskImage("refused", reason="the image is served by Label Studio and serve.download_dir is not set")
    if ls is None:
        return TaskImage("refused", reason="the image is served by Label Studio, which is not configured")
    try:
        data = ls.download(image.url or "", MAX_DOWNLOAD_BYTES)
    except LabelStudioError as exc:
        return TaskImage("refused", reason=str(exc))
    folder = Path(settings.serve.download_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(urlsplit(image.url or "").path).suffix.lower()
    suffix = suffix if suffix in settings.pool.extensions else ".img"
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
    if not target.exists():
        partial = target.with_suffix(target.suffix + f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(target)
    return TaskImage("local", path=target)


def _pool_for(store: Store, settings: Settings, path: Path) -> tuple[int, Path]:
    """The pool a new image is registered in: the configured pool if it lies there, else its served root."""
    roots: list[tuple[Path, Path, str]] = []
    if settings.pool.path:
        source = resolve_pool(settings.pool.path)
        if isinstance(source.root, Path) and isinstance(source.location, Path):  # not an object-store pool
            roots.append((source.root, source.location, source.kind))
    for extra in (settings.label_studio.document_root, settings.serve.download_dir):
        if extra:
            root = Path(extra).expanduser().resolve()
            roots.append((root, root, "directory"))
    for root, location, kind in roots:
        if path.is_relative_to(root):
            return store.pools.get_or_create(str(location), kind, str(root)), root
    raise ConfigError(f"{path} lies under no configured root")  # pragma: no cover - _locate only finds such paths


def _score_missing(
    store: Store, settings: Settings, mv: ModelVersionRecord, missing: Sequence[_Task], models: ModelCache
) -> tuple[int, int]:
    """Register the new images and score every missing one in one batch, under the run lock."""
    from curation.scoring.engine import ScoreJob, score_items
    from curation.scoring.images import original_size

    with run_lock(store):
        known = store.items.by_content([m.content_id for m in missing if m.content_id])
        locations = store.items.locations(list(known.values()))
        by_pool: dict[int, dict[int, ScoreJob]] = {}
        for m in missing:
            path = m.image.path if m.image is not None and m.image.kind == "local" else None
            if m.content_id in known and path is None:
                root_text, stored_path = locations.get(known[m.content_id], ("", ""))
                path = Path(root_text) / stored_path if stored_path else None
            if path is None or not path.is_file():
                m.problem = m.problem or "curate knows this image but cannot read it here"
                continue
            pool_id, root = _pool_for(store, settings, path)
            if m.content_id not in known:
                st = path.stat()
                width: int | None
                height: int | None
                try:
                    width, height = original_size(path, settings.pool.max_pixels)
                except Exception:  # not an image: scoring records the reason
                    width = height = None
                key = path.relative_to(root).as_posix()
                scanned = ScannedFile(key, st.st_size, st.st_mtime_ns, m.content_id or "", width, height)
                store.pools.apply_scan(pool_id, [scanned], ())
                known.update(store.items.by_content([m.content_id or ""]))
            item_id = known[m.content_id or ""]
            by_pool.setdefault(pool_id, {})[item_id] = ScoreJob(item_id, path)
        if not by_pool:
            return 0, 0
        runtime = models.runtime(store, settings, mv)
        scored = unreadable = 0
        for pool_id, jobs in by_pool.items():
            result = score_items(
                store,
                runtime,
                mv.id,
                pool_id,
                list(jobs.values()),
                settings.scoring,
                settings.pool.max_pixels,
                max_aspect=settings.pool.max_aspect_ratio,
            )
            scored += result.scored
            unreadable += result.failed + result.invalid
            for path_text, reason in result.failures:
                for m in missing:
                    if m.image is not None and m.image.path is not None and str(m.image.path) == str(path_text):
                        m.problem = f"unreadable image: {reason}"
        return scored, unreadable


def _confidence(store: Store, settings: Settings, mv: ModelVersionRecord, item_ids: list[int]) -> dict[int, float]:
    """1 − the configured strategy's uncertainty (its measure, or margin for strategies without one)."""
    if not item_ids:
        return {}
    measure = build_strategy(settings.strategy, store).measure or FALLBACK_MEASURE
    values = items_uncertainty(store, mv, np.asarray(item_ids, dtype=np.int64), measure, settings.strategy.detection)
    return {
        int(i): float(np.clip(1.0 - u, 0.0, 1.0))
        for i, u in zip(values.item_ids, values.uncertainty, strict=True)
        if np.isfinite(u)
    }
