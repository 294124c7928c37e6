"""The image encoder's part of ``curate score`` (``embedding.model``): embed the pool's readable items it has not
embedded yet, after the model's scoring. With nothing missing it costs a file hash and one EXISTS query: torch is
not imported."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from curation.config import EmbeddingSettings, Settings
from curation.errors import ModelLoadError
from curation.progress import NullProgress, Progress
from curation.scoring.summary import EmbeddingReport
from store import Store
from store.records import ItemToScore, ModelVersionRecord


def encoder_file(settings: Settings) -> Path | None:
    """``embedding.model`` as a path, or None when it is not set."""
    return Path(settings.embedding.model).expanduser() if settings.embedding.model else None


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes: the encoder's identity in the registry (the same as ``load_encoder``'s)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelLoadError(
            f"embedding.model {path} cannot be read: {exc.strerror or exc} (curate never downloads models)"
        ) from None
    return digest.hexdigest()


def encoder_key(file_sha256: str, settings: EmbeddingSettings) -> str:
    """The encoder's identity in the registry (its ``digest``): the file's SHA-256 and the preprocessing it is fed
    with, so a new file, input size or normalisation is a new version whose embeddings are computed afresh (vectors
    of one version are always comparable)."""
    spec = json.dumps([file_sha256, settings.imgsz, list(settings.mean), list(settings.std)])
    return hashlib.sha256(spec.encode()).hexdigest()


def encoder_version(path: Path, key: str) -> str:
    return f"{path.stem}-encoder-{key[:12]}"


def registered_encoder(store: Store, settings: Settings) -> ModelVersionRecord | None:
    """The registry's record of the configured encoder (None: not set, or never used with this database). Reads
    the file, never loads it."""
    path = encoder_file(settings)
    return None if path is None else store.models.encoder(encoder_key(file_digest(path), settings.embedding))


def embed_pool(
    store: Store,
    settings: Settings,
    pool_id: int,
    jobs: Callable[[list[ItemToScore]], tuple[list[Any], Any]],
    progress: Progress | None = None,
) -> EmbeddingReport | None:
    """Store the encoder's embedding of every readable item of the pool that lacks one (None: no
    ``embedding.model``). ``jobs`` turns the items into what the decoder reads, and the object source it reads
    them through (``curation.jobs.score``)."""
    path = encoder_file(settings)
    if path is None:
        return None
    progress = progress or NullProgress()
    known = registered_encoder(store, settings)
    if known is not None and not store.items.any_to_embed(pool_id, known.id):
        return EmbeddingReport(known.version, known)
    from curation.scoring.encoder import embed_items, load_encoder

    encoder = load_encoder(settings.embedding, settings.scoring)
    info = encoder.info
    key = encoder_key(info.digest, settings.embedding)  # of the bytes loaded, not of the file hashed above
    mv = store.models.register_encoder(
        version=encoder_version(path, key),
        source=info.source,
        format=info.format,
        imgsz=info.imgsz,
        embedding_dim=encoder.dim,
        digest=key,
    )
    encoder.info = replace(info, version=mv.version)
    todo, objects = jobs(store.items.to_embed(pool_id, mv.id))
    report = embed_items(
        store,
        encoder,
        mv.id,
        todo,
        settings.embedding,
        settings.scoring,
        max_pixels=settings.pool.max_pixels,
        max_aspect=settings.pool.max_aspect_ratio,
        objects=objects,
        progress=progress,
    )
    report.model = mv
    return report
