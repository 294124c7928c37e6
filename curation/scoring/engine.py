"""Batched scoring: a DataLoader decodes and resizes in worker processes, the model runs whole batches on the
device, and results are committed in chunks so that an interrupted run resumes where it stopped.

``inferred_batches`` is the one inference loop (decode in workers → ``ModelRuntime.infer``): scoring stores its
outputs, training's evaluation and ``curate simulate`` consume them directly.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from curation.config import ScoringSettings
from curation.faults import checkpoint
from curation.progress import NullProgress, Progress
from curation.scoring.images import (
    DEFAULT_MAX_ASPECT,
    Geometry,
    ImageDecodeError,
    center_crop,
    letterbox,
    load_rgb,
    perceptual_hash,
    rect_shape,
    stretch,
)
from curation.scoring.runtime import ItemOutput, ModelInfo, ModelRuntime
from curation.scoring.summary import ScoringReport
from store import Store
from store.records import ScoredChunk, ScoredItem

if TYPE_CHECKING:
    from curation.objects.source import ObjectSource

_PREPROCESS = {"center_crop": center_crop, "stretch": stretch}


@dataclass(frozen=True)
class ScoreJob:
    """One item to score; ``width``/``height`` (from the file header, if known) let detection batch by shape."""

    item_id: int
    path: Path | str  # a file, or an object key when the pool is an object store (see ``PoolDataset.objects``)
    width: int | None = None
    height: int | None = None
    # object-store items: the content id the scan recorded (``PENDING_PREFIX``…: listed, never read); the bytes
    # scoring reads are hashed and checked against it, or resolve it
    content_id: str | None = None


@dataclass(frozen=True)
class Sample:
    position: int
    image: torch.Tensor | None  # uint8 (3, S, S)
    geometry: Geometry | None
    error: str | None
    transient: bool = False
    phash: int | None = None  # the decoded image's perceptual hash (``images.perceptual_hash``)
    content_id: str | None = None  # of the bytes read from an object store (SHA-256, as the scan computes it)


class PoolDataset(Dataset[Sample]):
    """Decodes one image per index; a bad file yields an error sample instead of raising.

    With ``objects`` (an object-store pool) the objects are read into memory by ``PrefetchedObjects`` and reach
    the workers with their batch; an object that cannot be read now is a transient failure.

    Whatever goes wrong with one item in here (a decoder, OpenCV or a preprocessing step failing in a way nobody
    foresaw) becomes that item's failure: one file must never end the run, on this or any later rerun.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        preprocess: str,
        imgsz: int,
        max_pixels: int,
        shapes: Sequence[tuple[int, int] | None] | None = None,
        max_aspect: float = DEFAULT_MAX_ASPECT,
        objects: ObjectSource | None = None,
    ) -> None:
        self.paths = list(paths)
        self.objects = objects
        self.max_aspect = max_aspect
        self.preprocess = preprocess
        self.imgsz = imgsz
        self.max_pixels = max_pixels
        self.shapes = list(shapes) if shapes is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, batch: list[Any]) -> list[Sample]:
        """A batch of positions, or — for an object-store pool — of (position, bytes or read error) pairs read
        by ``PrefetchedObjects`` in the main process."""
        from curation.objects.source import ObjectReadError

        out = []
        for entry in batch:
            if isinstance(entry, tuple):
                position, data = entry
                if isinstance(data, ObjectReadError):
                    # never marked failed: gone, timing out or denied now, it is read again by the next run
                    out.append(Sample(position, None, None, str(data), True))
                else:
                    out.append(self._decode(position, data))
            else:
                out.append(self[entry])
        return out

    def __getitem__(self, position: int) -> Sample:
        if self.objects is not None:
            return self.__getitems__([(position, self.objects.read_many([str(self.paths[position])])[0])])[0]
        return self._decode(position, None)

    def _decode(self, position: int, data: bytes | None) -> Sample:
        sample = self._decoded(position, data)
        if data is None:
            return sample
        import hashlib

        # the content id, from the one read decoding needs (in the worker, beside the decoding)
        return replace(sample, content_id=hashlib.sha256(data).hexdigest()[:32])

    def _decoded(self, position: int, data: bytes | None) -> Sample:
        source = io.BytesIO(data) if data is not None else Path(self.paths[position])
        try:
            decoded = load_rgb(source, self.max_pixels, target=self.imgsz, max_aspect=self.max_aspect)
            if self.preprocess == "letterbox":
                shape = self.shapes[position]
                array, geometry = letterbox(decoded.rgb, self.imgsz, decoded.width, decoded.height, shape)
            else:
                array, geometry = _PREPROCESS[self.preprocess](decoded.rgb, self.imgsz, decoded.width, decoded.height)
            tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # CHW, own writable copy
            phash = perceptual_hash(decoded.rgb)  # from the decoded image, not the model input: model-independent
        except ImageDecodeError as exc:
            return Sample(position, None, None, str(exc), exc.transient)
        except MemoryError:
            return Sample(position, None, None, "out of memory while decoding", True)
        except Exception as exc:  # see the class docstring: an item's failure, never the run's
            detail = str(exc).strip().splitlines()
            reason = f"cannot preprocess image: {type(exc).__name__}" + (f": {detail[0][:200]}" if detail else "")
            return Sample(position, None, None, reason)
        return Sample(position, tensor, geometry, None, phash=phash)


@dataclass
class DecodedBatch:
    """The decodable images of one batch, stacked, and what could not be decoded (position, reason, transient)."""

    images: torch.Tensor | None  # uint8 (B, 3, H, W); None when nothing in the batch decoded
    positions: list[int]
    geometries: list[Geometry]
    failures: list[tuple[int, str, bool]]
    hashes: list[int | None] = field(default_factory=list)  # perceptual hash of each decoded image, as positions
    content_ids: dict[int, str] = field(default_factory=dict)  # position → content id of object-store bytes read


def collate(samples: list[Sample]) -> DecodedBatch:
    good = [s for s in samples if s.image is not None]
    return DecodedBatch(
        images=torch.stack([s.image for s in good]) if good else None,  # type: ignore[misc]
        positions=[s.position for s in good],
        geometries=[s.geometry for s in good],  # type: ignore[misc]
        hashes=[s.phash for s in good],
        failures=[(s.position, s.error or "unreadable", s.transient) for s in samples if s.image is None],
        content_ids={s.position: s.content_id for s in samples if s.content_id is not None},
    )


def _worker_init(_worker_id: int) -> None:
    import signal

    # The main process handles Ctrl-C and SIGTERM (it saves the scores and shuts the workers down). A worker that
    # handled them too would print a traceback of its own, and one that died of a stop sent to the whole process
    # group (systemd) would turn the orderly stop into a "worker killed" crash in the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Each worker decodes one image at a time; nested thread pools would only fight over the cores.
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def default_batch_size(requested: int | None, task: str, device: torch.device) -> int:
    if requested is not None:
        return requested
    if task == "classify":
        return 64 if device.type == "cuda" else 32
    return 32 if device.type == "cuda" else 8


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(requested: int | None, device: torch.device | None = None) -> int:
    """Decoding processes. With CUDA the CPU only decodes; on a CPU the cores are shared with inference, where
    a batch costs more than its decoding, so decoding gets about a third of them."""
    if requested is not None:
        return requested
    cores = _cores()
    if device is not None and device.type == "cuda":
        return min(8, cores)
    return max(1, cores // 3)


def default_threads(requested: int | None, workers: int, task: str) -> int:
    """CPU inference threads. A small classifier's forward pass costs about as much as decoding its input, so
    the cores are split between them (oversubscribing 2 cores costs ~20 %); a detector's forward pass is ~6x its
    decoding, so it keeps every core and the workers fill the gaps."""
    if requested is not None:
        return requested
    cores = _cores()
    return max(1, cores - workers) if task == "classify" else cores


def prediction_row(item_id: int, output: ItemOutput, geometry: Geometry, phash: int | None = None) -> ScoredItem:
    """What the store keeps of one model output (it encodes the arrays: ``store.blobs``), and of the image."""
    return ScoredItem(
        phash=phash,
        item_id=item_id,
        width=geometry.width,
        height=geometry.height,
        problem=output.problem,
        probs=output.probs,
        boxes=None if output.probs is not None else output.boxes,
        box_conf=None if output.probs is not None else output.box_conf,
        box_scores=None if output.probs is not None else output.box_scores,
        polygons=output.polygons or None,
        embedding=output.embedding,
    )


def shape_batches(
    jobs: Sequence[ScoreJob], preprocess: str, imgsz: int, stride: int, batch_size: int
) -> tuple[list[tuple[int, int] | None], list[list[int]]]:
    """Per-item canvas shapes and batches of equal shape.

    Detection letterboxes each image to the smallest stride-aligned rectangle (as Ultralytics' ``rect`` does)
    instead of a square; items are grouped by that shape so that every batch stacks. Items whose size is unknown
    get the square canvas.
    """
    shapes: list[tuple[int, int] | None] = [
        rect_shape(j.width, j.height, imgsz, stride) if preprocess == "letterbox" and j.width and j.height else None
        for j in jobs
    ]
    square = (imgsz, imgsz)
    order = sorted(range(len(jobs)), key=lambda i: (shapes[i] or square, i))
    batches: list[list[int]] = []
    for position in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (shapes[batches[-1][0]] or square) == (shapes[position] or square)
        ):
            batches[-1].append(position)
        else:
            batches.append([position])
    return shapes, batches


class PrefetchedObjects:
    """A batch sampler that reads each batch's objects in the main process — concurrently, ``ahead`` batches
    before the workers need them — and hands the bytes over with the batch. Why here and not in the workers:
    an object-store client's I/O threads do not survive ``fork``, and one read per object is all decoding needs
    (bytes stay in memory, never on disk)."""

    def __init__(self, batches: list[list[int]], keys: Sequence[str], objects: ObjectSource, ahead: int = 4) -> None:
        self.batches = batches
        self.keys = keys
        self.objects = objects
        self.ahead = max(1, ahead)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        pending: deque[tuple[list[int], Future[list[Any]]]] = deque()
        with ThreadPoolExecutor(max_workers=self.ahead, thread_name_prefix="object-read") as pool:
            todo = iter(self.batches)
            try:
                for batch in todo:
                    pending.append((batch, pool.submit(self.objects.read_many, [self.keys[p] for p in batch])))
                    if len(pending) >= self.ahead:
                        done, future = pending.popleft()
                        yield list(zip(done, future.result(), strict=True))
                while pending:
                    done, future = pending.popleft()
                    yield list(zip(done, future.result(), strict=True))
            finally:
                for _, future in pending:
                    future.cancel()


NO_PIXEL_LIMIT = 10**12  # for images that were read once already (when they were scored)


def decoded_batches(
    jobs: Sequence[ScoreJob],
    info: ModelInfo,
    batch_size: int,
    *,
    workers: int = 0,
    max_pixels: int = NO_PIXEL_LIMIT,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    pin_memory: bool = False,
    objects: ObjectSource | None = None,
) -> Iterator[DecodedBatch]:
    """Decode and preprocess ``jobs`` for a model described by ``info``, in ``workers`` processes, in batches of
    one canvas shape (see ``shape_batches``). Positions in the batches index ``jobs``."""
    shapes, batches = shape_batches(jobs, info.preprocess, info.imgsz, info.stride, batch_size)
    dataset = PoolDataset(
        [j.path for j in jobs], info.preprocess, info.imgsz, max_pixels, shapes, max_aspect, objects=objects
    )
    sampler: Any = batches
    if objects is not None:
        sampler = PrefetchedObjects(batches, [str(j.path) for j in jobs], objects, ahead=max(4, 2 * workers))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def inferred_batches(
    runtime: ModelRuntime,
    jobs: Sequence[ScoreJob],
    batch_size: int,
    *,
    workers: int = 0,
    max_pixels: int = NO_PIXEL_LIMIT,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    objects: ObjectSource | None = None,
) -> Iterator[tuple[DecodedBatch, list[ItemOutput]]]:
    """The one inference loop: each decoded batch with the model's output for each of its images (in
    ``batch.positions`` order; empty when nothing in the batch decoded). Scoring, training's evaluation and
    ``simulate`` all run their models through it."""
    pin = runtime.device.type == "cuda"
    batches = decoded_batches(
        jobs,
        runtime.info,
        batch_size,
        workers=workers,
        max_pixels=max_pixels,
        max_aspect=max_aspect,
        pin_memory=pin,
        objects=objects,
    )
    for batch in batches:
        outputs = runtime.infer(batch.images, batch.geometries) if batch.images is not None else []
        yield batch, outputs


@dataclass
class ResultBatch:
    """What one engine computed for a batch of items, before it is stored: the items that could not be decoded
    (item id, path, reason, transient) and the reduced model outputs (path, row). Both engines produce these and
    ``commit_results`` stores them, so failures, retries and flagged outputs are recorded the same way."""

    failures: list[tuple[int, str, str, bool]]
    scored: list[tuple[str, ScoredItem]]
    read: dict[int, str] = field(default_factory=dict)  # item id → content id of the object-store bytes read

    def __len__(self) -> int:
        return len(self.failures) + len(self.scored)


def local_results(
    runtime: ModelRuntime,
    items: Sequence[ScoreJob],
    batch_size: int,
    *,
    workers: int,
    max_pixels: int,
    max_aspect: float,
    objects: ObjectSource | None,
) -> Iterator[ResultBatch]:
    """The local engine: ``inferred_batches`` in this process, each batch reduced to store rows."""
    batches = inferred_batches(
        runtime, items, batch_size, workers=workers, max_pixels=max_pixels, max_aspect=max_aspect, objects=objects
    )
    for batch, outputs in batches:
        failures = [
            (items[position].item_id, str(items[position].path), reason, transient)
            for position, reason, transient in batch.failures
        ]
        hashes = batch.hashes or [None] * len(batch.positions)
        scored = [
            (str(items[position].path), prediction_row(items[position].item_id, output, geometry, phash))
            for position, geometry, output, phash in zip(
                batch.positions, batch.geometries, outputs, hashes, strict=True
            )
        ]
        read = {items[position].item_id: content_id for position, content_id in batch.content_ids.items()}
        yield ResultBatch(failures, scored, read)


def commit_results(
    store: Store,
    run_id: int,
    model_version_id: int,
    results: Iterator[ResultBatch],
    report: ScoringReport,
    chunk_size: int,
    progress: Progress,
    items: Sequence[ScoreJob] = (),
) -> None:
    """Store what an engine computed, in chunks of ``chunk_size`` items (one transaction each): broken files as
    failed, transient failures left for the next run, flagged outputs warned about. Object-store bytes read by
    scoring resolve a pending item's content id (the scan only listed it), and an item whose bytes no longer hash to
    its recorded content id (replaced after the scan) gets no scores from them: read again next run. On Ctrl-C the
    chunk in hand is committed before the interrupt goes on."""
    from store.records import PENDING_PREFIX

    recorded = {job.item_id: job.content_id for job in items if job.content_id is not None}
    chunk = ScoredChunk()
    start = time.perf_counter()

    def flush() -> None:
        nonlocal chunk
        if len(chunk):
            moved = store.runs.write_chunk(run_id, model_version_id, chunk)
            report.duplicates += sum(1 for pending, item in moved.items() if pending != item)
            checkpoint("score-after-chunk")
            report.scored += chunk.n_valid
            report.invalid += chunk.n_invalid
            report.failed += len(chunk.failures)
            chunk = ScoredChunk()

    try:
        for batch in results:
            if report.first_batch_s is None:
                report.first_batch_s = time.perf_counter() - start
            changed: set[int] = set()
            for item_id, content_id in batch.read.items():
                was = recorded.get(item_id)
                if was is not None and was.startswith(PENDING_PREFIX):
                    chunk.resolved[item_id] = content_id
                elif was is not None and was != content_id:
                    changed.add(item_id)
            for item_id, path, reason, transient in batch.failures:
                if item_id in changed:
                    report.retry_later += 1
                    progress.warn(f"skipped {path} for now: changed since the scan (read again next run)")
                    continue
                if transient:
                    report.retry_later += 1
                    progress.warn(f"skipped {path} for now: {reason} (tried again next run)")
                    continue
                chunk.failures.append((item_id, reason))
                report.failures.append((path, reason))
                progress.warn(f"skipped {path}: {reason}")
            for path, row in batch.scored:
                if row.item_id in changed:
                    report.retry_later += 1
                    progress.warn(f"skipped {path} for now: changed since the scan (read again next run)")
                    continue
                # the store leaves out a NaN or overflowing embedding (it would poison every distance it
                # enters); a missing embedding is handled downstream
                chunk.scored.append(row)
                if row.problem:
                    progress.warn(f"flagged {path}: {row.problem}")
            elapsed = time.perf_counter() - start
            if len(chunk) >= chunk_size:
                flush()
            processed = report.scored + report.invalid + report.failed + len(chunk)
            progress.advance(len(batch), rate=processed / elapsed if elapsed > 0 else None)
        flush()
    except KeyboardInterrupt:
        flush()  # keep what was computed: the rerun continues from here
        report.interrupted = True
        raise


def score_items(
    store: Store,
    runtime: ModelRuntime,
    model_version_id: int,
    pool_id: int,
    items: Sequence[ScoreJob],
    settings: ScoringSettings,
    max_pixels: int,
    progress: Progress | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    objects: ObjectSource | None = None,
) -> ScoringReport:
    """Score ``items`` (item id, absolute path — or object key, with ``objects``) and store every result; broken
    files are recorded as failed, files that cannot be read right now are left for the next run."""
    progress = progress or NullProgress()
    report = ScoringReport(todo=len(items))
    if not items:
        return report
    workers = default_workers(settings.workers, runtime.device)
    batch_size = default_batch_size(settings.batch_size, runtime.info.task, runtime.device)
    threads = default_threads(settings.threads, workers, runtime.info.task) if runtime.device.type == "cpu" else None
    run_id = store.runs.start(model_version_id, pool_id, len(items), str(runtime.device), batch_size)
    report.run_id = run_id
    start = time.perf_counter()
    progress.start(f"scoring with {runtime.info.version}", len(items))
    status = "failed"
    try:
        with runtime.threads(threads):
            results = local_results(
                runtime,
                items,
                batch_size,
                workers=workers,
                max_pixels=max_pixels,
                max_aspect=max_aspect,
                objects=objects,
            )
            commit_results(store, run_id, model_version_id, results, report, settings.chunk_size, progress, items)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        report.seconds = time.perf_counter() - start
        progress.finish()
        store.runs.finish(run_id, status, report.images_per_s if status == "completed" else None)
    return report
