"""Object-store pools (``s3://bucket/prefix``): a streamed, incremental, concurrent scan.

The listing is consumed one page (≤ 1000 objects) at a time: each page is compared with what the store recorded
for those keys, the new and changed objects (another size or ETag) are read concurrently into memory, hashed
(the content id, as for local files: SHA-256 of the bytes) and their headers read, and the page is committed.
Unchanged objects are not read at all. Only after the whole listing succeeded are the paths it did not see
forgotten, so a scan cut short (an endpoint dying mid-listing) loses nothing: the rerun continues from what was
committed. Bytes are never written to local disk.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

from curation.objects.source import ObjectInfo, ObjectReadError, ObjectSource, S3Location, parse_s3_uri
from curation.scoring.images import DEFAULT_MAX_PIXELS, original_size
from curation.scoring.pool import ScanReport
from store import Store
from store.records import ScannedFile


@dataclass(frozen=True)
class ObjectPool:
    """A pool in an object store. Items' paths are stored relative to ``root`` (the prefix's URI)."""

    location: str  # s3://bucket/prefix as given (normalised)
    kind: str  # "s3"
    root: str  # s3://bucket/prefix
    bucket: str
    prefix: str

    def key(self, stored: str) -> str:
        return f"{self.prefix}{stored}"

    def uri(self, stored: str) -> str:
        return f"s3://{self.bucket}/{self.key(stored)}"


def resolve_object_pool(uri: str) -> ObjectPool:
    location: S3Location = parse_s3_uri(uri.strip())
    prefix = location.prefix
    return ObjectPool(location.uri, "s3", location.uri, location.bucket, prefix)


def object_source(pool: ObjectPool, s3: object) -> ObjectSource:
    """The S3 source for ``pool`` with credentials from ``pool.s3.*`` and the AWS environment."""
    from curation.objects.s3 import S3ObjectSource, resolve_credentials

    credentials = resolve_credentials(s3)
    return S3ObjectSource(
        pool.bucket,
        credentials,
        max_concurrency=getattr(s3, "max_concurrency", 32),
        timeout_s=getattr(s3, "timeout_s", 30.0),
        max_retries=getattr(s3, "max_retries", 5),
    )


def content_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _scanned(path: str, info: ObjectInfo, data: bytes, max_pixels: int) -> ScannedFile:
    digest = content_id_of(data)
    try:
        width, height = original_size(io.BytesIO(data), max_pixels)
    except Exception:  # not an image: decoding records the reason once, as for local files
        return ScannedFile(path, info.size, info.mtime_ns, digest, etag=info.etag)
    return ScannedFile(path, info.size, info.mtime_ns, digest, width, height, etag=info.etag)


def scan_object_pool(
    store: Store,
    pool: ObjectPool,
    source: ObjectSource,
    extensions: tuple[str, ...],
    on_progress: Callable[[int, int], None] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, ScanReport]:
    """List ``pool``'s prefix and register its images; see the module docstring. ``source.check`` runs first:
    bad credentials, a missing bucket or an unreachable endpoint fail before any work."""
    source.check(pool.prefix)
    report = ScanReport()
    pool_id = store.pools.get_or_create(pool.location, pool.kind, pool.root)
    mark = time.time_ns()
    listed = 0
    for page in source.list_pages(pool.prefix):
        wanted = [o for o in page if not o.key.endswith("/") and _suffix(o.key) in extensions]
        paths = [o.key[len(pool.prefix) :] for o in wanted]
        known = store.pools.known_among(pool_id, paths)
        unchanged: list[str] = []
        to_read: list[tuple[str, ObjectInfo]] = []
        for path, info in zip(paths, wanted, strict=True):
            old = known.get(path)
            if old is not None and old.size == info.size and old.etag is not None and old.etag == info.etag:
                unchanged.append(path)
            else:
                to_read.append((path, info))
        results = source.read_many([info.key for _, info in to_read])
        changed: list[ScannedFile] = []
        for (path, info), result in zip(to_read, results, strict=True):
            if isinstance(result, ObjectReadError):
                shown = source.uri(info.key)
                note = " (tried again next run)" if result.transient else ""
                report.skipped.append((shown, f"{result}{note}"))
                if path in known:
                    unchanged.append(path)  # keep what the last scan read until the object can be read again
                continue
            changed.append(_scanned(path, info, result, max_pixels))
        store.pools.mark_seen(pool_id, unchanged, mark)
        if changed:
            new_items, _ = store.pools.apply_scan(pool_id, changed, (), mark=mark)
            report.new_items += new_items
        report.hashed += len(changed)
        report.files += len(unchanged) + len(changed)
        listed += len(page)
        if on_progress is not None:
            on_progress(listed, 0)
    report.removed = store.pools.sweep(pool_id, mark)
    report.duplicate_paths = store.pools.duplicate_paths(pool_id)
    return pool_id, report


def _suffix(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
