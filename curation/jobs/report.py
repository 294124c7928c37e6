"""``curate report``: one self-contained HTML page (and optionally each figure as a PNG) about the pool, the queue,
the models and a simulation — gathered from what the database records, read-only, without Label Studio.

``gather`` collects plain data (``curation.reporting.data``) through the store's repositories; ``report`` checks
where it writes first (a bad ``--out`` fails before any work), renders the figures and the page
(``curation.reporting``) and writes them atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from curation.config import Settings
from curation.errors import ConfigError, InputFileError, UnknownReferenceError
from curation.files import atomic_path, atomic_write_text, check_output_folder, check_output_path
from curation.jobs.registry import models as registry_versions
from curation.reporting.data import (
    ClassBalance,
    Curves,
    Distribution,
    EmbeddingMap,
    ReportData,
    Series,
    Thumbnail,
)
from curation.reports import Report, rounded
from curation.scoring.images import ImageDecodeError, load_rgb
from curation.scoring.pool import absolute_path, resolve_pool
from curation.selection import FALLBACK_MEASURE, build_strategy, candidate_uncertainty, items_uncertainty
from store import Store
from store.records import ModelVersionRecord

QUEUE_TOP = 12  # thumbnails of the top of the queue
MAX_VERSIONS = 8  # newest model versions compared in the uncertainty figure
MAP_POINTS = 3000  # remaining (unmarked) items drawn on the embedding map; marked ones are always drawn
THUMB_PX = 128


@dataclass
class ReportOutcome(Report):
    out: Path
    size_kib: float = field(metadata=rounded(1))
    figures: list[str]
    png: list[Path]
    empty: bool
    current_model: str | None
    counts: dict[str, int]
    notes: list[str]


def report(
    store: Store,
    settings: Settings,
    *,
    out: Path,
    png_dir: Path | None = None,
    simulation: Path | None = None,
) -> ReportOutcome:
    """Write the report to ``out`` (and each figure to ``png_dir/<name>.png``)."""
    from curation.reporting import figures as figs
    from curation.reporting import html

    out = Path(out)
    check_output(out, png_dir)
    data = gather(store, settings, simulation=simulation)
    drawn = figs.render(data)
    page = html.render(data, drawn)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, page)
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    pngs: list[Path] = []
    if png_dir is not None:
        for fig in drawn:
            target = png_dir / f"{fig.name}.png"
            try:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(fig.png)
            except OSError as exc:
                raise ConfigError(f"cannot write --png {target}: {exc.strerror or exc}") from None
            pngs.append(target)
    return ReportOutcome(
        out=out,
        size_kib=len(page.encode("utf-8")) / 1024,
        figures=[f.name for f in drawn],
        png=pngs,
        empty=data.empty,
        current_model=data.current_model,
        counts=data.counts,
        notes=data.notes,
    )


def check_output(out: Path, png_dir: Path | None) -> None:
    """Refuse an ``--out`` that cannot be written and create ``--png``'s folder, before anything is gathered (the
    same checks, and words, as every other command's output paths)."""
    check_output_path(out, "--out", (".html", ".htm"))
    if png_dir is not None:
        check_output_folder(png_dir, "--png")


# ---------------------------------------------------------------------------------------------------------------------
# Gathering


def gather(store: Store, settings: Settings, *, simulation: Path | None = None) -> ReportData:
    """Everything the report shows, as plain data. Reads only."""
    now = datetime.now(UTC)
    pool_id, pool_location = _pool(store, settings)
    current = _current(store, settings)
    counts = store.items.counts(pool_id, current.id if current else None)
    versions = _versions(store)
    data = ReportData(
        generated_at=now,
        database=store.display_url,
        pool=pool_location,
        current_model=current.version if current else None,
        task=current.task if current else None,
        counts=counts,
        versions=versions,
    )
    if simulation is not None:
        data.simulation = load_simulation(simulation)
    data.timeline = _timeline(store, pool_id, now)
    if current is None:
        if not data.empty:
            data.notes.append("No model has scored this database yet: uncertainty, map and class balance are left out.")
        return data
    measure = build_strategy(settings.strategy, store).measure or FALLBACK_MEASURE
    pools = [pool_id] if pool_id is not None else [i for i, _ in store.pools.all()]
    data.distributions = _distributions(store, settings, pools, current, measure)
    states = store.items.states(pool_id)
    data.queue, data.queue_source = _queue(store, settings, pool_id, states, current, measure)
    data.embedding_map = _embedding_map(store, current, pool_id, states, data.notes)
    data.balance = _balance(store, settings, current, states, measure)
    if not data.distributions:
        data.notes.append(f"No item is left to select under {current.version}: the uncertainty figure is left out.")
    return data


def _pool(store: Store, settings: Settings) -> tuple[int | None, str | None]:
    if not settings.pool.path:
        return None, None
    source = resolve_pool(settings.pool.path)
    location = str(source.location)
    pool_id = store.pools.find(location)
    if pool_id is None:
        raise UnknownReferenceError(f"pool {location} is not in {store.display_url}: score it first (curate score)")
    return pool_id, location


def _current(store: Store, settings: Settings) -> ModelVersionRecord | None:
    """The version ``--model-version`` names, else the registry's current one, else the latest run's (as
    ``curate status`` does)."""
    if settings.model.version:
        mv = store.models.get(settings.model.version)
        if mv is None:
            raise UnknownReferenceError(f"no model version {settings.model.version!r} in {store.display_url}")
        return mv
    current = store.models.current()
    if current is None:
        runs = store.runs.recent(limit=1)
        if runs:
            current = store.models.get(runs[0]["model_version"])
    return current


def _versions(store: Store) -> list[dict[str, Any]]:
    metrics = {mv.version: mv.metrics for mv, _ in store.models.versions()}
    return [v | {"metrics": metrics.get(v["version"])} for v in registry_versions(store)["versions"]]


def _utc(value: datetime) -> datetime:
    """Stored times as aware UTC datetimes (SQLite hands them back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _series(name: str, events: Iterable[tuple[datetime, int]], start: datetime, end: datetime) -> Series:
    """Cumulative sum of (time, change) events, from 0 at ``start`` to its last value at ``end``."""
    times: list[datetime] = [start]
    values: list[int] = [0]
    total = 0
    for when, change in sorted(events, key=lambda ev: ev[0]):
        total += change
        if when == times[-1]:
            values[-1] = total
        else:
            times.append(when)
            values.append(total)
    if end > times[-1]:
        times.append(end)
        values.append(total)
    return Series(name, times, values)


def _timeline(store: Store, pool_id: int | None, now: datetime) -> list[Series]:
    """Scored / failed / selected / queued / labeled / skipped over time, from the recorded times of scoring runs,
    selections, pushes and annotations."""
    all_runs = {r["id"]: r for r in store.runs.history()}
    run_time = {i: _utc(r["finished_at"] or r["started_at"]) for i, r in all_runs.items()}
    pool_runs = store.runs.history(pool_id) if pool_id is not None else list(all_runs.values())
    events: dict[str, list[tuple[datetime, int]]] = {k: [] for k in ("scored", "failed", "selected")}
    unknown_run = 0
    for run_id, n in store.runs.first_scored(pool_id).items():
        if run_id in run_time:
            events["scored"].append((run_time[run_id], n))
        else:
            unknown_run += n
    events["failed"] = [(run_time[r["id"]], r["failed"]) for r in pool_runs if r["failed"]]
    events["selected"] = [(_utc(s["created_at"]), s["selected"]) for s in store.selections.history(pool_id)]
    queued: list[tuple[datetime, int]] = []
    labeled: list[tuple[datetime, int]] = []
    skipped: list[tuple[datetime, int]] = []
    for task in store.label_studio.task_history(pool_id):
        pushed = _utc(task["pushed_at"])
        queued.append((pushed, 1))
        if task["status"] in ("labeled", "skipped"):
            resolved = max(_utc(task["resolved_at"]), pushed) if task["resolved_at"] else pushed
            queued.append((resolved, -1))
            (labeled if task["status"] == "labeled" else skipped).append((resolved, 1))
    events |= {"queued": queued, "labeled": labeled, "skipped": skipped}
    times = [t for evs in events.values() for t, _ in evs]
    if not times:
        return []
    # from the first run's start: items scored by it then rise from 0 at its end
    start = min([*times, *(_utc(r["started_at"]) for r in all_runs.values())])
    if unknown_run:  # predictions whose run was deleted: known to exist, not when
        events["scored"].append((start, unknown_run))
    end = max(now, max(times))
    return [_series(name, evs, start, end) for name, evs in events.items() if evs]


def _distributions(
    store: Store, settings: Settings, pools: list[int], current: ModelVersionRecord, measure: str
) -> list[Distribution]:
    """The remaining pool's uncertainty under each of the newest model versions (and the current one), oldest
    first: the same items, as each model saw them."""
    records = [mv for mv, _ in store.models.versions()]
    chosen = records[:MAX_VERSIONS]
    if all(mv.id != current.id for mv in chosen):
        chosen = [*chosen[: MAX_VERSIONS - 1], current]
    out = []
    for mv in sorted(chosen, key=lambda m: m.id):
        values = _remaining_uncertainty(store, settings, pools, mv, measure)
        if len(values):
            out.append(Distribution(mv.version, mv.task, measure, mv.id == current.id, _utc(mv.created_at), values))
    return out


def _remaining_uncertainty(
    store: Store, settings: Settings, pools: list[int], mv: ModelVersionRecord, measure: str
) -> NDArray[np.float64]:
    ids: list[NDArray[np.int64]] = []
    values: list[NDArray[np.float64]] = []
    for pool in pools:
        cands = candidate_uncertainty(store, pool, mv, measure, settings.strategy.detection)
        ids.append(cands.item_ids)
        values.append(cands.uncertainty)
    if not ids:
        return np.zeros(0)
    all_ids = np.concatenate(ids)
    all_values = np.concatenate(values)
    _, first = np.unique(all_ids, return_index=True)  # an item in two pools counts once
    kept = all_values[np.sort(first)]
    return kept[~np.isnan(kept)]


def _queue(
    store: Store,
    settings: Settings,
    pool_id: int | None,
    states: dict[str, NDArray[np.int64]],
    current: ModelVersionRecord,
    measure: str,
) -> tuple[list[Thumbnail], str]:
    """The next items labelers get: Label Studio's queue in curate's order, else the latest selection's items not
    yet queued or labeled."""
    in_scope = set(states["queued"].tolist())
    waiting: list[tuple[int, int]] = []  # (position, item id)
    titles = []
    for project in store.label_studio.projects():
        tasks = [t for t in store.label_studio.queue(project.id) if t.item_id in in_scope]
        if tasks:
            titles.append(project.title)
        waiting += [(t.position if t.position is not None else 10**9, t.item_id) for t in tasks]
    ids: list[int] = []
    for _, item_id in sorted(waiting):
        if item_id not in ids:
            ids.append(item_id)
    if ids:
        source = f"Top of the Label Studio queue ({len(ids)} tasks waiting in {', '.join(titles)})"
    else:
        selection_id = store.selections.latest_id(pool_id)
        if selection_id is None:
            return [], ""
        taken = set(np.concatenate([states["queued"], states["labeled"], states["skipped"]]).tolist())
        ids = [s.item_id for s in store.selections.items(selection_id) if s.item_id not in taken]
        if not ids:
            return [], ""
        source = f"Top of selection #{selection_id} ({len(ids)} items not in Label Studio)"
    top = ids[:QUEUE_TOP]
    scores = items_uncertainty(store, current, np.array(top, dtype=np.int64), measure, settings.strategy.detection)
    where = store.items.locations(top)
    remote = _object_thumbnails(settings, [where[i] for i in top if i in where and where[i][0].startswith("s3://")])
    out = []
    for k, item_id in enumerate(top):
        root, stored = where.get(item_id, ("", "?"))
        if (root, stored) in remote:
            jpeg, problem = remote[(root, stored)]
        else:
            jpeg, problem = (
                _thumbnail(absolute_path(root, stored), settings.pool.max_pixels) if root else (None, "no path")
            )
        value = float(scores.uncertainty[k])
        out.append(Thumbnail(item_id, k + 1, stored, None if np.isnan(value) else value, jpeg, problem))
    return out, source


def _object_thumbnails(
    settings: Settings, locations: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[bytes | None, str | None]]:
    """Thumbnails of object-store items (at most ``QUEUE_TOP``: one GET each, read concurrently into memory with
    the configured ``pool.s3`` credentials), keyed by (pool root, stored path); a failure is that thumbnail's
    problem, never the report's."""
    from curation.errors import CurateError
    from curation.scoring.object_pool import object_source, resolve_object_pool

    out: dict[tuple[str, str], tuple[bytes | None, str | None]] = {}
    by_root: dict[str, list[str]] = {}
    for root, stored in locations:
        by_root.setdefault(root, []).append(stored)
    for root, paths in by_root.items():
        try:
            pool = resolve_object_pool(root)
            results: list[Any] = object_source(pool, settings.pool.s3).read_many([pool.key(p) for p in paths])
        except CurateError as exc:
            results = [exc] * len(paths)
        for stored, data in zip(paths, results, strict=True):
            if isinstance(data, bytes):
                out[(root, stored)] = _thumbnail(io.BytesIO(data), settings.pool.max_pixels)
            else:
                out[(root, stored)] = (None, str(data))
    return out


def _thumbnail(path: Path | io.BytesIO, max_pixels: int) -> tuple[bytes | None, str | None]:
    """A small JPEG of ``path`` (decoded as scoring decodes: EXIF-oriented, bombs refused), or why not."""
    from PIL import Image

    try:
        decoded = load_rgb(path, max_pixels, target=THUMB_PX)
    except ImageDecodeError as exc:
        return None, str(exc)
    image = Image.fromarray(decoded.rgb)
    image.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue(), None


def _embedding_map(
    store: Store,
    current: ModelVersionRecord,
    pool_id: int | None,
    states: dict[str, NDArray[np.int64]],
    notes: list[str],
) -> EmbeddingMap | None:
    from curation.reporting.projection import project_2d

    dim = current.embedding_dim
    embedded = store.scores.embedded_items(current.id, pool_id) if dim else np.zeros(0, np.int64)
    if dim is None or len(embedded) < 2:
        notes.append(
            f"No embeddings are stored for {current.version} (a model without pooled features, or fewer than two "
            "items scored): the embedding map is left out."
        )
        return None
    marked = np.intersect1d(np.union1d(np.union1d(states["selected"], states["queued"]), states["labeled"]), embedded)
    remaining = np.setdiff1d(embedded, marked, assume_unique=True)
    if len(remaining) > MAP_POINTS:
        remaining = np.sort(np.random.default_rng(0).choice(remaining, MAP_POINTS, replace=False))
    chosen = np.concatenate([marked, remaining])
    vectors, found = store.scores.embeddings(current.id, chosen, dim)
    chosen, vectors = chosen[found], vectors[found]
    if len(chosen) < 2:
        notes.append(f"Fewer than two usable embeddings under {current.version}: the embedding map is left out.")
        return None
    coords, method = project_2d(vectors)
    labeled, queued, selected = (set(states[k].tolist()) for k in ("labeled", "queued", "selected"))
    point_states = [
        "labeled" if i in labeled else "queued" if i in queued else "selected" if i in selected else "remaining"
        for i in chosen.tolist()
    ]
    return EmbeddingMap(current.version, method, coords, point_states, chosen, len(embedded))


def _labeled_classes(labels: dict[str, Any]) -> set[str]:
    """The classes one normalised annotation contains (``curation.labelstudio.formats.normalize_annotation``)."""
    found = {str(c) for c in labels.get("classes") or []}
    for key in ("boxes", "polygons"):
        found |= {str(r["label"]) for r in labels.get(key) or [] if isinstance(r, dict) and r.get("label")}
    return found


def _balance(
    store: Store,
    settings: Settings,
    current: ModelVersionRecord,
    states: dict[str, NDArray[np.int64]],
    measure: str,
) -> ClassBalance | None:
    selected = states["selected"]
    labeled_ids = set(states["labeled"].tolist())
    labels = {i: lab for i, lab in store.labels.latest().items() if i in labeled_ids}
    if len(selected) == 0 and not labels:
        return None
    classes = list(current.class_names)
    per_item = [_labeled_classes(lab) for lab in labels.values()]
    extra = sorted({c for found in per_item for c in found} - set(classes))
    classes += extra
    index = {c: k for k, c in enumerate(classes)}
    labeled_counts = [0] * len(classes)
    for found in per_item:
        for c in found:
            labeled_counts[index[c]] += 1
    predicted = items_uncertainty(store, current, selected, measure, settings.strategy.detection)
    with_prediction = ~np.isnan(predicted.uncertainty) | predicted.classes.any(axis=1)
    selected_counts = [int(v) for v in predicted.classes[with_prediction].sum(axis=0)] + [0] * len(extra)
    return ClassBalance(
        classes=classes,
        selected=selected_counts,
        labeled=labeled_counts,
        n_selected=int(with_prediction.sum()),
        n_labeled=len(labels),
        model_version=current.version,
    )


def load_simulation(path: Path) -> Curves:
    """The learning curves of a ``curate simulate`` result (its ``--out`` JSON)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"--simulation {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"--simulation {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(f"--simulation {path}: not JSON ({exc})") from None
    try:
        curves = {
            str(name): sorted((int(n), float(p["mean"]), float(p["std"])) for n, p in points.items())
            for name, points in data["curves"].items()
        }
        metric = str(data["metric"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputFileError(
            f"--simulation {path}: not a result of curate simulate (it needs 'metric' and 'curves')"
        ) from None
    dataset = Path(str(data.get("dataset", "dataset"))).name
    title = (
        f"{dataset}: {data.get('trainer', '?')} trainer, {data.get('seeds', '?')} seed(s), "
        f"test split {data.get('test_size', '?')}"
    )
    headline = data.get("headline") if isinstance(data.get("headline"), dict) else None
    return Curves(str(path), metric, title, curves, headline)
