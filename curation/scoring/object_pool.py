"""Object-store pools (``s3://bucket/prefix``): a streamed, incremental scan that reads no object.

The listing is consumed one page (≤ 1000 objects) at a time and compared with what the store recorded: S3 lists
keys in UTF-8 byte order, so each page is compared with the stored paths in its key range — one range query per
page, and nothing written for unchanged objects (same key, size and ETag). New and changed objects are registered
as *pending* items (key, size, ETag; no bytes read): the one read that scoring needs computes the SHA-256 content id
as well, and resolves the item then (renamed to its content id, or merged into the item that already has that
content — duplicates are found there). Only after the whole listing succeeded are the paths it did not show
forgotten, so a scan cut short (an endpoint dying mid-listing) loses nothing: the rerun continues from what was
committed. A listing that is not in byte order (some S3-compatible server) is still handled, by marking each listed
path. Bytes are never written to local disk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from curation.objects.source import ListingOrderError, ObjectInfo, ObjectSource, S3Location, parse_s3_uri
from curation.scoring.images import DEFAULT_MAX_PIXELS
from curation.scoring.pool import ScanReport
from store import Store

# A rescan lists the prefix in up to this many key ranges at once, cut at keys the last scan stored (each range at
# least MIN_RANGE keys, so that the page each range lists past its end is a small part of it).
LIST_RANGES = 8
MIN_RANGE = 4000


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


def scan_object_pool(
    store: Store,
    pool: ObjectPool,
    source: ObjectSource,
    extensions: tuple[str, ...],
    on_progress: Callable[[int, int], None] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, ScanReport]:
    """List ``pool``'s prefix and register its images without reading any; see the module docstring.
    ``source.check`` runs first: bad credentials, a missing bucket or an unreachable endpoint fail before any work.
    ``max_pixels`` is unused here (objects are first decoded, and checked, when scored); kept for the local scan's
    signature."""
    source.check(pool.prefix)
    pool_id = store.pools.get_or_create(pool.location, pool.kind, pool.root)
    report = _scan(store, pool_id, pool, source, extensions, on_progress, by_marks=False)
    if report is None:  # not listed in byte order: list again, marking each listed path
        report = _scan(store, pool_id, pool, source, extensions, on_progress, by_marks=True) or ScanReport()
    report.pending = store.pools.pending_count(pool_id)
    report.duplicate_paths = store.pools.duplicate_paths(pool_id)
    return pool_id, report


def _scan(
    store: Store,
    pool_id: int,
    pool: ObjectPool,
    source: ObjectSource,
    extensions: tuple[str, ...],
    on_progress: Callable[[int, int], None] | None,
    *,
    by_marks: bool,
) -> ScanReport | None:
    """One pass over the listing. Without ``by_marks`` each page is compared with the stored paths of its key
    range, which is right only if the whole listing is in byte order: the first page that is not ends the pass
    (None; pending items registered so far stay, nothing is forgotten) and the caller lists again ``by_marks``."""
    try:
        return _scan_pages(store, pool_id, pool, source, extensions, on_progress, by_marks=by_marks)
    except ListingOrderError:  # a ranged listing found the server out of byte order: list again by marks
        return None


def _scan_pages(
    store: Store,
    pool_id: int,
    pool: ObjectPool,
    source: ObjectSource,
    extensions: tuple[str, ...],
    on_progress: Callable[[int, int], None] | None,
    *,
    by_marks: bool,
) -> ScanReport | None:
    report = ScanReport()
    mark = time.time_ns()
    cut = len(pool.prefix)
    after: str | None = None  # the last stored path of the pages compared so far (byte order)
    gone: list[int] = []
    listed = 0
    wanted_suffixes = frozenset(e.lower() for e in extensions)
    # a rescan lists key ranges concurrently (cut at keys the last scan stored); a first scan has none to cut at
    points = [] if by_marks else store.pools.split_points(pool_id, LIST_RANGES, MIN_RANGE)
    pages = source.list_ranges(pool.prefix, [pool.key(p) for p in points]) if points else None
    for page in pages if pages is not None else source.list_pages(pool.prefix):
        if not page:
            continue
        if not by_marks and not _ascending(page, after, cut):
            return None
        last = page[-1].key[cut:]
        wanted = [o for o in page if _wanted(o.key, wanted_suffixes)]
        paths = [o.key[cut:] for o in wanted]
        unchanged: list[str] = []
        new: list[tuple[str, int, int, str | None]] = []
        if not by_marks:
            known = {p: (i, size, etag) for p, i, size, etag in store.pools.known_in_range(pool_id, after, last)}
            for path, info in zip(paths, wanted, strict=True):
                old = known.pop(path, None)
                if old is None or old[1] != info.size or old[2] is None or old[2] != info.etag:
                    new.append((path, info.size, info.mtime_ns, info.etag))
                else:
                    unchanged.append(path)
            gone += [i for i, _, _ in known.values()]  # in the range listed so far but not listed: deleted
            after = last
        else:
            known_paths = store.pools.known_among(pool_id, paths)
            for path, info in zip(paths, wanted, strict=True):
                k = known_paths.get(path)
                if k is not None and k.size == info.size and k.etag is not None and k.etag == info.etag:
                    unchanged.append(path)
                else:
                    new.append((path, info.size, info.mtime_ns, info.etag))
            store.pools.mark_seen(pool_id, unchanged, mark)
        report.new_items += store.pools.register_pending(pool_id, new, mark)
        report.files += len(unchanged) + len(new)
        listed += len(page)
        if on_progress is not None:
            on_progress(listed, 0)
    # the listing is complete: what it did not show is gone (a listing cut short raised above, forgetting nothing)
    if by_marks:
        report.removed = store.pools.forget(pool_id, [], mark)
    else:
        report.removed = store.pools.forget(pool_id, gone + store.pools.ids_after(pool_id, after))
    return report


def _ascending(page: Sequence[ObjectInfo], after: str | None, cut: int) -> bool:
    """Whether a listing page continues the byte order (Python compares ``str`` by code point = UTF-8 bytes)."""
    previous = after
    for info in page:
        key = info.key[cut:]
        if previous is not None and key <= previous:
            return False
        previous = key
    return True


def _wanted(key: str, suffixes: frozenset[str]) -> bool:
    """Whether a listed key names an image file: its name (after the last ``/``) has one of ``suffixes`` after
    a dot that does not start it; a "directory" key (``a/``) has no name."""
    dot = key.rfind(".")
    return dot > key.rfind("/") + 1 and key[dot:].lower() in suffixes
