"""The image encoder (``embedding.model``): a TorchScript or ONNX network that turns images into feature vectors
for the diversity strategies and near-duplicate suppression, apart from the scoring model.

A young scoring model's features separate its few classes and little else, so distances between them say little
about which images look alike; a pretrained encoder's do. Its embeddings are stored like the model's (L2-normalised
float16, ``store.blobs``), under the encoder's own registry version.

Loading follows the scoring model's rules (``model_files``): a TorchScript archive is loaded with
``torch.jit.load`` (no Python unpickling), never a pickle; an ONNX file only through onnxruntime. The file is read
once: its bytes are what is hashed (the version) and what is loaded, so the stored embeddings always belong to the
digest they are filed under.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from curation.config import EmbeddingSettings, ScoringSettings
from curation.errors import ModelLoadError, ModelOutputError, RuntimeUnavailableError
from curation.progress import NullProgress, Progress
from curation.scoring.engine import ScoreJob, decoded_batches, default_threads, default_workers
from curation.scoring.images import DEFAULT_MAX_ASPECT
from curation.scoring.runtime import ModelInfo, _first_line, is_torchscript_archive, resolve_device, torch_threads
from curation.scoring.summary import EmbeddingReport
from store import Store
from store.models import ENCODER

if TYPE_CHECKING:
    from curation.objects.source import ObjectSource

ONNX_SUFFIXES = (".onnx",)


def encoder_format(path: Path) -> str:
    """``onnx`` for an ``.onnx`` file, else ``torchscript`` (checked when read)."""
    return "onnx" if path.suffix.lower() in ONNX_SUFFIXES else "torchscript"


@dataclass
class Encoder:
    """A loaded encoder: ``embed`` takes a uint8 (N, 3, S, S) batch and returns (N, D) unit rows (float32)."""

    info: ModelInfo  # what decoding needs (input size, center crop); ``digest``: SHA-256 of the bytes loaded
    device: torch.device
    run: Callable[[torch.Tensor], Any]  # the network on a normalised float batch
    dim: int = 0

    def embed(self, batch: torch.Tensor) -> NDArray[np.float32]:
        x = batch.to(self.device).float().mul_(1.0 / 255.0)
        mean = torch.tensor(self.info.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.info.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            out = self.run((x - mean) / std)
        features = _features(out, len(batch), self.info.source)
        if self.dim and features.shape[1] != self.dim:
            raise ModelOutputError(
                f"embedding.model {self.info.source} returned {features.shape[1]} features, {self.dim} before"
            )
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def _features(out: Any, n: int, source: str) -> NDArray[np.float32]:
    """The (n, D) features of one output: the tensor itself or a tuple's last element; trailing 1x1 dims (a
    pooled conv map) are dropped."""
    if isinstance(out, (tuple, list)) and out:
        out = out[-1]
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    if not isinstance(out, np.ndarray) or out.ndim < 2 or out.shape[0] != n or any(d != 1 for d in out.shape[2:]):
        shape = tuple(out.shape) if isinstance(out, np.ndarray) else type(out).__name__
        raise ModelOutputError(
            f"embedding.model {source} returned {shape} for a batch of {n} images, expected (N, D) features "
            "(or a tuple whose last element is)"
        )
    features = out.reshape(n, -1).astype(np.float32, copy=False)
    if features.shape[1] == 0:
        raise ModelOutputError(f"embedding.model {source} returned empty (N, 0) features")
    return features


def _torchscript_runner(path: Path, data: bytes, device: torch.device) -> Callable[[torch.Tensor], Any]:
    if not is_torchscript_archive(io.BytesIO(data)):
        raise ModelLoadError(
            f"embedding.model {path} is not a TorchScript archive (torch.jit.save) nor an .onnx file: curate never "
            "unpickles model files (save the encoder with torch.jit.script(...).save or torch.jit.trace(...).save)"
        )
    try:
        net = torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as exc:
        raise ModelLoadError(f"cannot load embedding.model {path} (TorchScript): {_first_line(exc)}") from None
    net.eval()
    return net


def _onnx_runner(path: Path, data: bytes, device: torch.device, threads: int | None) -> Callable[[torch.Tensor], Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeUnavailableError(
            f"embedding.model {path} is an ONNX file and needs onnxruntime, which is not installed: "
            "pip install onnxruntime (or a TorchScript encoder)"
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"cannot load embedding.model {path} (ONNX): {_first_line(exc)}") from None
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> Any:
        return session.run(None, {name: x.cpu().numpy().astype(np.float32)})

    return run


def load_encoder(settings: EmbeddingSettings, scoring: ScoringSettings) -> Encoder:
    """Read, hash and load ``embedding.model`` on ``scoring.device``, and probe it with a blank batch of two: a file
    that is not an encoder fails here, naming the file (``ModelLoadError``), before any item is read."""
    if not settings.model:
        raise ModelLoadError("embedding.model is not set")
    path = Path(settings.model).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"embedding.model {path} cannot be read: {exc.strerror or exc} (curate never downloads models)"
        ) from None
    device = resolve_device(scoring.device)
    fmt = encoder_format(path)
    if fmt == "onnx":
        run = _onnx_runner(path, data, device, scoring.threads)
    else:
        run = _torchscript_runner(path, data, device)
    digest = hashlib.sha256(data).hexdigest()
    info = ModelInfo(
        source=str(path.resolve()),
        format=fmt,
        task=ENCODER,
        class_names=[],
        version=path.stem,  # the registry names it (``curation.jobs.embed``: digest and preprocessing)
        imgsz=settings.imgsz,
        preprocess="center_crop",
        mean=settings.mean,
        std=settings.std,
        digest=digest,
    )
    encoder = Encoder(info, device, run)
    blank = torch.full((2, 3, settings.imgsz, settings.imgsz), 114, dtype=torch.uint8)
    try:
        encoder.dim = int(encoder.embed(blank).shape[1])
    except ModelOutputError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # the network rejects its input (size, channels, dtype)
        raise ModelLoadError(
            f"embedding.model {path} fails on a 2x3x{settings.imgsz}x{settings.imgsz} float batch "
            f"(embedding.imgsz): {_first_line(exc)}"
        ) from None
    return encoder


def embed_items(
    store: Store,
    encoder: Encoder,
    model_version_id: int,
    jobs: Sequence[ScoreJob],
    settings: EmbeddingSettings,
    scoring: ScoringSettings,
    *,
    max_pixels: int,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    objects: ObjectSource | None = None,
    progress: Progress | None = None,
) -> EmbeddingReport:
    """Embed ``jobs`` and store the vectors in chunks of ``scoring.chunk_size`` (an interrupted run keeps what it
    committed). An item the decoder refuses is marked failed, as scoring marks it; one that cannot be read now
    (or whose object changed since the scan) is left for the next run."""
    progress = progress or NullProgress()
    report = EmbeddingReport(encoder.info.version, todo=len(jobs), device=str(encoder.device))
    if not jobs:
        return report
    workers = default_workers(scoring.workers, encoder.device)
    threads = default_threads(scoring.threads, workers, "classify") if encoder.device.type == "cpu" else None
    recorded = {j.item_id: j.content_id for j in jobs if j.content_id is not None}
    vectors: list[tuple[int, NDArray[np.float32]]] = []
    failures: list[tuple[int, str]] = []
    start = time.perf_counter()

    def flush() -> None:
        if vectors or failures:
            stored = store.runs.write_embeddings(model_version_id, vectors, failures)
            report.embedded += stored
            report.invalid += len(vectors) - stored
            report.failed += len(failures)
            vectors.clear()
            failures.clear()

    progress.start(f"embedding with {encoder.info.version}", len(jobs))
    try:
        with torch_threads(threads):
            batches = decoded_batches(
                jobs,
                encoder.info,
                settings.batch_size,
                workers=workers,
                max_pixels=max_pixels,
                max_aspect=max_aspect,
                objects=objects,
            )
            for batch in batches:
                changed = {
                    jobs[p].item_id
                    for p, content_id in batch.content_ids.items()
                    if recorded.get(jobs[p].item_id) not in (None, content_id)
                }
                for position, reason, transient in batch.failures:
                    job = jobs[position]
                    if transient or job.item_id in changed:
                        report.retry_later += 1
                        progress.warn(f"skipped {job.path} for now: {reason} (embedded next run)")
                    else:
                        failures.append((job.item_id, reason))
                        report.failures.append((str(job.path), reason))
                        progress.warn(f"skipped {job.path}: {reason}")
                if batch.images is not None:
                    rows = encoder.embed(batch.images)
                    for position, row in zip(batch.positions, rows, strict=True):
                        if jobs[position].item_id in changed:
                            report.retry_later += 1
                        else:
                            vectors.append((jobs[position].item_id, row))
                if len(vectors) + len(failures) >= scoring.chunk_size:
                    flush()
                elapsed = time.perf_counter() - start
                done = report.embedded + report.invalid + report.failed + len(vectors) + len(failures)
                progress.advance(len(batch.positions) + len(batch.failures), rate=done / elapsed if elapsed else None)
            flush()
    except KeyboardInterrupt:
        flush()
        raise
    finally:
        report.seconds = time.perf_counter() - start
        progress.finish()
    return report
