"""The object-source protocol: list a prefix page by page (or by key ranges, concurrently), read one object's bytes."""

from __future__ import annotations

import queue
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from curation.errors import CurateError, PoolError

S3_SCHEME = "s3://"


class ObjectInfo(NamedTuple):
    """One listed object: its key (full, within the bucket), size in bytes, ETag and last-modified time. A named
    tuple: a listing makes one per object, and a frozen dataclass costs twice as much to build."""

    key: str
    size: int
    etag: str | None
    mtime_ns: int = 0


class ObjectReadError(CurateError):
    """One object cannot be read. ``transient``: it may be readable on the next run (deleted between list and
    read, timeout, reset, throttling beyond the retries), so it is never marked failed; otherwise (access denied)
    it is reported for that object, and also tried again next run."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ReadsOneByMany:
    """``read`` for readers whose real work is ``read_many`` (URIs and task references): the one path for a
    single read, so a failure is raised with the words the batch would have returned."""

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        result = self.read_many([key])[0]
        if isinstance(result, ObjectReadError):
            raise result
        return result


class ListingOrderError(CurateError):
    """A listing that is not in UTF-8 byte order (or ignores ``start-after``): key ranges cannot be listed apart,
    so the caller lists the whole prefix in one stream instead."""


class ObjectSource(Protocol):
    """A bucket (or folder) of objects. Implementations must be usable from DataLoader worker processes (forked
    or pickled): they open their connections lazily, per process."""

    bucket: str

    def check(self, prefix: str) -> None:
        """Fail with ``ObjectStoreError`` (naming bucket and endpoint) unless the prefix can be listed."""
        ...

    def list_pages(self, prefix: str) -> Iterator[Sequence[ObjectInfo]]:
        """The objects under ``prefix``, one page (at most ~1000) at a time, streamed as the server pages."""
        ...

    def list_ranges(self, prefix: str, boundaries: Sequence[str]) -> Iterator[Sequence[ObjectInfo]]:
        """The same objects as ``list_pages``, in byte order, listed concurrently in the key ranges that
        ``boundaries`` (ascending keys) cut the prefix into; see ``ranged_pages``."""
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes (raises ``ObjectReadError``)."""
        ...

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        """Several objects concurrently, in ``keys`` order; a failure is returned in place of its bytes."""
        ...

    def uri(self, key: str) -> str:
        """The object's address, ``s3://bucket/key``."""
        ...


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ends with "/" unless the user named a key prefix without one

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"


def is_s3_uri(text: str) -> bool:
    return text[:5].lower() == S3_SCHEME


def parse_s3_uri(text: str) -> S3Location:
    """``s3://bucket/prefix`` → (bucket, prefix), validated once at the boundary."""
    if not is_s3_uri(text):
        raise PoolError(f"not an s3:// URI: {text}")
    rest = text[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket or not _valid_bucket(bucket):
        raise PoolError(f"invalid bucket name in {text!r}: 3-63 lowercase letters, digits, dots and hyphens")
    if "//" in prefix or prefix.startswith("/"):
        raise PoolError(f"invalid S3 prefix in {text!r}: empty path segment")
    return S3Location(bucket, prefix)


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum() and name[-1].isalnum()


RANGE_AHEAD = 2  # pages buffered per key range: memory stays at (ranges x this) pages whatever the prefix holds


def ranged_pages(
    pages_after: Callable[[str | None], Iterator[Sequence[ObjectInfo]]],
    boundaries: Sequence[str],
    concurrency: int,
) -> Iterator[Sequence[ObjectInfo]]:
    """One prefix's listing, cut by ``boundaries`` (ascending keys, normally keys the previous scan stored) into
    the ranges ``[start, b1]``, ``(b1, b2]``, …, ``(bn, end)``, listed ``concurrency`` at a time and yielded in byte
    order, as one sequential listing would be.

    ``pages_after(key)`` is the source's listing that starts after ``key`` (S3 ``ListObjectsV2`` ``start-after``;
    None: from the start). Each range stops at the first page that passes its upper boundary, trimmed there, so an
    object added anywhere — inside a range, before the first boundary or past the last — is listed by exactly one
    range, and a boundary key deleted since it was stored still cuts the key space in the same place. Why: one
    sequential listing waits for each page before it asks for the next; here many pages are in flight while the
    caller compares the ones it has. Raises ``ListingOrderError`` when a range's listing is not in byte order after
    its start (the ranges would then not add up to the prefix). Ranges are started in order, so a range waiting
    for its turn to be consumed never blocks the one being consumed."""
    if not boundaries:
        yield from pages_after(None)
        return
    starts: list[str | None] = [None, *boundaries]
    ends: list[str | None] = [*boundaries, None]
    stop = threading.Event()
    queues: list[queue.Queue[Sequence[ObjectInfo] | BaseException | None]] = [
        queue.Queue(maxsize=RANGE_AHEAD) for _ in starts
    ]

    def put(index: int, item: Sequence[ObjectInfo] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                queues[index].put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(index: int) -> None:
        if stop.is_set():
            return
        start, end = starts[index], ends[index]
        previous = start
        try:
            for page in pages_after(start):
                if stop.is_set():
                    return
                for info in page:
                    if previous is not None and info.key <= previous:
                        put(index, ListingOrderError(f"the listing after {start!r} is not in byte order"))
                        return
                    previous = info.key
                if end is not None and page and page[-1].key > end:
                    cut = bisect_right(page, end, key=lambda info: info.key)
                    if cut:
                        put(index, page[:cut])
                    break
                if page and not put(index, page):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put(index, exc)
            return
        put(index, None)

    pool = ThreadPoolExecutor(max(1, min(concurrency, len(starts))), thread_name_prefix="object-list")
    try:
        for index in range(len(starts)):
            pool.submit(produce, index)
        for q in queues:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:  # also when the caller stops early: the ranges still listing end at their next page
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
