"""``scoring.engine: ray``: the scoring pipeline as a Ray Data job, for pools that outgrow one machine.

The items the store says are missing become a dataset (slices of one Arrow table); read + decode run with the
local engine's decoder (``PoolDataset``) — inside the inference actors on a CPU-only cluster, as Ray tasks ahead of
them where the actors hold GPUs (``scoring.ray.decode``); inference runs in an actor pool (``map_batches`` with a
callable class and ``ActorPoolStrategy``) whose actors load the model once and reduce each output to a store row
(``prediction_row``, the local engine's reduction). The rows stream back to this process, which commits them in
chunks with ``commit_results`` — the local engine's code path — so a killed driver loses at most a chunk, a rerun
scores only what is missing, and unreadable items are recorded the same way.

Ray itself is imported only inside the functions that need it: without the ``curate[ray]`` extra, asking for this
engine is one clear error (``require_ray``), and nothing else changes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from curation.errors import ClusterError, EngineUnavailableError, ModelLoadError
from curation.progress import NullProgress, Progress
from curation.scoring.summary import ScoringReport

if TYPE_CHECKING:
    from curation.config import Settings
    from curation.objects.source import ObjectSource
    from curation.scoring.engine import ResultBatch, Sample, ScoreJob
    from curation.scoring.images import Geometry
    from curation.scoring.runtime import ModelInfo
    from store import Store

INSTALL_HINT = "pip install 'curate[ray]'"
_STOP_WAIT_S = 5.0  # after ray.shutdown(): how long a process the run started may take to exit before it is killed


def require_ray() -> None:
    """Fail with one clear line unless Ray (with Ray Data) is installed; imports nothing."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise EngineUnavailableError(
            f"scoring.engine ray needs Ray, which is not installed: {INSTALL_HINT} (or use scoring.engine local)"
        )


# -- the cluster ----------------------------------------------------------------------------------------------------


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:  # pragma: no cover
        return []


def _stop_leftovers(processes: Sequence[Any]) -> None:
    """Kill what the run started and ``ray.shutdown()`` left running. Ray's worker processes (``ray::...``: the
    inference actors, idle workers) have nothing left to do once their cluster is shut down, yet an actor that
    loaded torch takes ~2 s to notice: they are killed at once. The cluster's own processes (GCS, raylet) get
    ``_STOP_WAIT_S`` to exit before they are killed. psutil checks each process's start time, so a recycled pid is
    never hit."""
    import psutil

    workers: list[Any] = []
    others: list[Any] = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            (workers if proc.name().startswith("ray::") else others).append(proc)
    for proc in workers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _gone, alive = psutil.wait_procs(others, timeout=_STOP_WAIT_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs([*workers, *alive], timeout=_STOP_WAIT_S)


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[str]:
    """Connect to the cluster at ``address`` (unset: ``RAY_ADDRESS``), or start a local Ray for the block and stop
    every process of it afterwards. Yields the address used (``local`` for a local Ray). A Ray this process is
    already connected to (a notebook's) is used as it is and left running.

    While connected, this process's stdout goes to stderr: Ray prints its cluster messages ("a worker died ...")
    on stdout, which belongs to ``--json``."""
    import ray

    if ray.is_initialized():
        with contextlib.redirect_stdout(sys.stderr):
            yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    with contextlib.redirect_stdout(sys.stderr):
        if address:
            try:
                ray.init(address=address, **quiet)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types for the same thing
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
            try:
                yield address
            finally:
                ray.shutdown()
            return
        before = {p.pid for p in _descendants()}
        from curation.scoring.engine import _cores

        try:
            ray.init(address="local", num_cpus=_cores(), include_dashboard=False, **quiet)
        except Exception as exc:
            _stop_leftovers([p for p in _descendants() if p.pid not in before])
            raise ClusterError(f"cannot start a local Ray: {_first_line(exc)}") from None
        try:
            yield "local"
        finally:
            started = [p for p in _descendants() if p.pid not in before]
            ray.shutdown()
            _stop_leftovers(started)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@dataclass(frozen=True)
class Resources:
    """What the pipeline asks of the cluster, resolved from ``scoring.ray`` and the cluster's resources."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    decode_cpus: float
    batch_size: int
    threads: int
    fused: bool = False  # read + decode inside the inference actors (``scoring.ray.decode: actors``)


def plan_resources(ray_settings: Any, batch_size: int | None, task: str, cluster: dict[str, float]) -> Resources:
    """Defaults from the cluster's resources (``ray.cluster_resources()``): one actor per GPU (per
    ``gpus_per_actor``) where there are GPUs, decoding as CPU tasks ahead of them. On a CPU-only cluster the actors
    decode too (``decode: auto``): every CPU runs an actor. With ``decode: tasks`` on CPUs two thirds of the CPUs
    run inference and the rest decode, as the local engine splits one machine's cores."""
    import torch

    from curation.scoring.engine import default_batch_size

    gpus = float(cluster.get("GPU", 0.0))
    cpus = float(cluster.get("CPU", 0.0))
    per_gpu = ray_settings.gpus_per_actor if ray_settings.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    per_cpu = ray_settings.cpus_per_actor
    decode = getattr(ray_settings, "decode", "auto")
    fused = decode == "actors" or (decode == "auto" and per_gpu == 0)
    if ray_settings.actors is not None:
        actors = ray_settings.actors
    elif per_gpu > 0:
        actors = max(1, int(gpus / per_gpu))
    else:
        actors = max(1, int(cpus / per_cpu if fused else cpus * 2 / 3 / per_cpu))
    if per_gpu > gpus:
        raise ClusterError(f"scoring.ray.gpus_per_actor is {per_gpu:g} but the cluster has {gpus:g} GPU(s)")
    if per_cpu > cpus or (not fused and ray_settings.decode_cpus > cpus):
        raise ClusterError(
            f"the cluster has {cpus:g} CPU(s): an actor asks for {per_cpu:g} (scoring.ray.cpus_per_actor) and a "
            f"decoding task for {ray_settings.decode_cpus:g} (scoring.ray.decode_cpus)"
        )
    device = torch.device("cuda" if per_gpu > 0 else "cpu")
    return Resources(
        actors=actors,
        cpus_per_actor=per_cpu,
        gpus_per_actor=per_gpu,
        decode_cpus=ray_settings.decode_cpus,
        batch_size=default_batch_size(batch_size, task, device),
        threads=max(1, round(per_cpu)),
        fused=fused,
    )


# -- the pipeline's stages (run in Ray workers) -----------------------------------------------------------------------


def _column(values: Sequence[Any], dtype: Any = object) -> np.ndarray:
    out = np.empty(len(values), dtype=dtype)
    out[:] = values
    return out


@dataclass(frozen=True)
class DecodeOptions:
    """How a worker reads and decodes items: the model's input and the pool's limits (the local engine's)."""

    preprocess: str
    imgsz: int
    max_pixels: int
    max_aspect: float
    objects: ObjectSource | None = None


def _decode(batch: Any, options: DecodeOptions) -> list[Sample]:
    """Read and decode a batch of input rows with the local engine's ``PoolDataset``, one sample per row."""
    from curation.scoring.engine import PoolDataset

    paths = [str(p) for p in batch["path"]]
    shapes = [(int(h), int(w)) if h else None for h, w in zip(batch["shape_h"], batch["shape_w"], strict=True)]
    dataset = PoolDataset(
        paths, options.preprocess, options.imgsz, options.max_pixels, shapes, options.max_aspect, options.objects
    )
    entries: list[Any] = list(range(len(paths)))
    if options.objects is not None:
        entries = list(enumerate(options.objects.read_many(paths)))
    return dataset.__getitems__(entries)


def decode_rows(batch: Any, *, options: DecodeOptions) -> dict[str, np.ndarray]:
    """Ray task (``decode: tasks``): read and decode a batch of items. Each decoded image travels to the actors as
    its uint8 CHW bytes with its shape and ``Geometry``; an undecodable one as its reason."""
    import ray

    from curation.scoring.engine import _worker_init

    _worker_init(0)  # one thread per decoder, as in the local engine's workers
    samples = _decode(batch, options)
    images, dims, geometries = [], [], []
    for sample in samples:
        if sample.image is None:
            images.append(b"")
            dims.append((0, 0))
            geometries.append(b"")
        else:
            images.append(sample.image.numpy().tobytes())
            dims.append((int(sample.image.shape[1]), int(sample.image.shape[2])))
            geometries.append(pickle.dumps(sample.geometry))
    return {
        "item_id": batch["item_id"],
        "path": batch["path"],
        "image": _column(images),
        "h": np.array([d[0] for d in dims], dtype=np.int32),
        "w": np.array([d[1] for d in dims], dtype=np.int32),
        "geometry": _column(geometries),
        "error": _column([s.error or "" for s in samples]),
        "transient": np.array([s.transient for s in samples], dtype=bool),
        # 64 unsigned bits: as text
        "phash": _column(["" if s.phash is None else format(s.phash, "x") for s in samples]),
        # object-store bytes: their content id (``commit_results`` checks it)
        "content_id": _column([s.content_id or "" for s in samples]),
        "decoded_on": _column([ray.get_runtime_context().get_node_id()] * len(samples)),
    }


def _decoded_samples(batch: dict[str, np.ndarray]) -> list[Sample]:
    """The samples ``decode_rows`` sent, rebuilt from their columns."""
    import torch

    from curation.scoring.engine import Sample

    out = []
    for i in range(len(batch["item_id"])):
        error, phash, content_id = str(batch["error"][i]), str(batch["phash"][i]), str(batch["content_id"][i])
        image = geometry = None
        if not error:
            h, w = int(batch["h"][i]), int(batch["w"][i])
            image = torch.from_numpy(np.frombuffer(batch["image"][i], dtype=np.uint8).reshape(3, h, w))
            geometry = pickle.loads(batch["geometry"][i])
        out.append(
            Sample(
                i,
                image,
                geometry,
                error or None,
                bool(batch["transient"][i]),
                int(phash, 16) if phash else None,
                content_id or None,
            )
        )
    return out


class InferenceActor:
    """Ray actor: loads the model once, then turns batches into store rows (pickled ``ScoredItem``). With
    ``decode`` (``scoring.ray.decode: actors``) it reads and decodes its batches of items itself, as one local
    engine would; without, it takes the images ``decode_rows`` tasks decoded."""

    def __init__(
        self, settings: Settings, version: str, digest: str, threads: int, decode: DecodeOptions | None = None
    ) -> None:
        import ray

        from curation.jobs.model import load_runtime

        self.runtime = load_runtime(settings, None)
        if digest and self.runtime.info.digest != digest:
            raise ModelLoadError(
                f"the model file {settings.model.path} on this Ray node is not the one the driver loaded "
                "(different weights): every node must see the same file"
            )
        self.runtime.info = replace(self.runtime.info, version=version)
        self.threads = threads
        self.decode = decode
        self.node_id = ray.get_runtime_context().get_node_id()
        if decode is not None:
            with contextlib.suppress(ImportError):
                import cv2

                cv2.setNumThreads(1)  # decoding in this process: as in the local engine's workers

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from curation.scoring.engine import prediction_row

        n = len(batch["item_id"])
        samples = _decode(batch, self.decode) if self.decode is not None else _decoded_samples(batch)
        rows: list[bytes] = [b""] * n
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, sample in enumerate(samples):
            if sample.image is not None:
                groups.setdefault(tuple(sample.image.shape), []).append(i)
        with self.runtime.threads(self.threads):
            for members in groups.values():
                images = torch.stack([cast(torch.Tensor, samples[i].image) for i in members])
                geometries = [cast("Geometry", samples[i].geometry) for i in members]
                outputs = self.runtime.infer(images, geometries)
                for i, geometry, output in zip(members, geometries, outputs, strict=True):
                    row = prediction_row(int(batch["item_id"][i]), output, geometry, samples[i].phash)
                    rows[i] = pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
        node = np.full(n, self.node_id, dtype=object)
        return {
            "item_id": batch["item_id"],
            "path": batch["path"],
            "row": _column(rows),
            "error": _column([s.error or "" for s in samples]),
            "transient": np.array([s.transient for s in samples], dtype=bool),
            "content_id": _column([s.content_id or "" for s in samples]),
            "node_id": node,
            "decoded_on": node if self.decode is not None else batch["decoded_on"],
        }


def input_blocks(items: Sequence[ScoreJob], order: Sequence[int], shapes: Sequence[Any], block: int) -> list[Any]:
    """The items to score as Arrow tables of ``block`` rows each (item id, path, canvas shape), in ``order``: one
    table built column by column straight from the jobs — no dict per row, as ``ray.data.from_items`` holds —
    then sliced (zero-copy), so the driver's extra memory is the Arrow data itself (the paths' bytes + ~16 bytes
    an item)."""
    import pyarrow as pa

    square = (0, 0)  # an unknown canvas shape: the square one (``shape_batches``)
    table = pa.table(
        {
            "item_id": pa.array([items[p].item_id for p in order], type=pa.int64()),
            "path": pa.array([str(items[p].path) for p in order], type=pa.string()),
            "shape_h": pa.array([(shapes[p] or square)[0] for p in order], type=pa.int32()),
            "shape_w": pa.array([(shapes[p] or square)[1] for p in order], type=pa.int32()),
        }
    )
    return [table.slice(start, block) for start in range(0, len(order), block)]


def block_rows(todo: int, actors: int, batch_size: int) -> int:
    """Rows per input block: a whole number of batches, about 16 blocks per actor (so the actors finish together
    — the last block is the tail — and results reach the driver as they go), at most 1,024 rows (what one dead
    actor's retry redoes) and at least one batch."""
    batches = math.ceil(todo / max(1, 16 * actors) / batch_size)
    return batch_size * max(1, min(batches, max(1, 1024 // batch_size)))


# -- the driver ------------------------------------------------------------------------------------------------------


def _results(batches: Iterable[Any], nodes: set[str]) -> Iterator[ResultBatch]:
    from curation.scoring.engine import ResultBatch

    for batch in batches:
        failures, scored = [], []
        nodes.update(str(node) for node in batch["node_id"])
        nodes.update(str(node) for node in batch["decoded_on"])
        read = {int(i): str(c) for i, c in zip(batch["item_id"], batch["content_id"], strict=True) if c}
        for item_id, path, row, error, transient in zip(
            batch["item_id"], batch["path"], batch["row"], batch["error"], batch["transient"], strict=True
        ):
            if error:
                failures.append((int(item_id), str(path), str(error), bool(transient)))
            else:
                scored.append((str(path), pickle.loads(row)))
        yield ResultBatch(failures, scored, read)


def score_items_ray(
    store: Store,
    info: ModelInfo,
    model_version_id: int,
    pool_id: int,
    items: Sequence[ScoreJob],
    settings: Settings,
    progress: Progress | None = None,
    objects: ObjectSource | None = None,
) -> ScoringReport:
    """Score ``items`` on the Ray cluster of ``scoring.ray`` and store every result here, in chunks. Called
    inside the caller's ``ray_cluster`` block (the driver starts the cluster while it loads its own copy of the
    model); with no items it returns at once, without touching Ray.

    ``settings.model`` must name the model file the driver loaded (``info``): every actor loads it and checks
    its digest."""
    import ray

    from curation.scoring.engine import commit_results, shape_batches

    progress = progress or NullProgress()
    report = ScoringReport(todo=len(items))
    if not items:
        return report
    plan = plan_resources(settings.scoring.ray, settings.scoring.batch_size, info.task, ray.cluster_resources())
    # Items in the local engine's batch order (grouped by canvas shape), so each actor batch mostly stacks whole.
    shapes, batches = shape_batches(items, info.preprocess, info.imgsz, info.stride, plan.batch_size)
    order = [position for batch in batches for position in batch]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is on the driver (img/s)
    context.print_on_execution_start = False
    options = DecodeOptions(
        info.preprocess, info.imgsz, settings.pool.max_pixels, settings.pool.max_aspect_ratio, objects
    )
    actor_settings = settings.model_copy(
        update={
            "scoring": settings.scoring.model_copy(
                update={"device": settings.scoring.device if plan.gpus_per_actor > 0 else "cpu"}
            )
        }
    )
    actor_args: dict[str, Any] = {
        "settings": actor_settings,
        "version": info.version,
        "digest": info.digest,
        "threads": plan.threads,
    }
    dataset: Any  # ray.data.Dataset
    if plan.fused:
        # the actors read, decode and infer each block, batch by batch
        block = block_rows(len(order), plan.actors, plan.batch_size)
        dataset = ray.data.from_arrow(input_blocks(items, order, shapes, block))
        actor_args["decode"] = options
    else:
        decode_batch = max(1, min(plan.batch_size, math.ceil(len(order) / max(1, 2 * plan.actors))))
        dataset = ray.data.from_arrow(input_blocks(items, order, shapes, decode_batch)).map_batches(
            cast(Any, decode_rows),  # its options come as fn_kwargs
            fn_kwargs={"options": options},
            batch_size=decode_batch,
            batch_format="numpy",
            num_cpus=plan.decode_cpus,
        )
    dataset = dataset.map_batches(
        InferenceActor,
        fn_constructor_kwargs=actor_args,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        scheduling_strategy="SPREAD",  # one actor per node before two on one: nodes fail independently
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )
    device = f"ray:{plan.actors}x{'cuda' if plan.gpus_per_actor > 0 else 'cpu'}"
    run_id = store.runs.start(model_version_id, pool_id, len(items), device, plan.batch_size)
    report.run_id = run_id
    report.device = device
    start = time.perf_counter()
    progress.start(f"scoring with {info.version} on Ray ({plan.actors} actor(s))", len(items))
    status = "failed"
    nodes: set[str] = set()
    try:
        results = _results(dataset.iter_batches(batch_size=None, batch_format="numpy"), nodes)
        try:
            commit_results(
                store, run_id, model_version_id, results, report, settings.scoring.chunk_size, progress, items
            )
        except (KeyboardInterrupt, ModelLoadError):
            raise
        except Exception as exc:
            if isinstance(exc, ray.exceptions.RayError):
                raise ClusterError(f"the Ray job failed: {_first_line(exc)}") from exc
            raise
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        report.seconds = time.perf_counter() - start
        report.nodes = sorted(nodes)
        progress.finish()
        store.runs.finish(run_id, status, report.images_per_s if status == "completed" else None)
    return report
