"""An in-memory ``ObjectSource`` for fast tests: pages like S3, counts reads, and injects per-key faults."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence

from curation.objects.source import ObjectInfo, ObjectReadError, ranged_pages


class MemoryObjectSource:
    def __init__(self, bucket: str = "fake-bucket", page_size: int = 1000) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.pages_served = 0
        self.max_page_seen = 0
        self.faults: dict[str, ObjectReadError] = {}  # key -> error raised on read
        self.vanish_on_read: set[str] = set()  # listed, then deleted before the read
        self.shuffled = False  # list out of byte order, as some S3-compatible servers might
        self.listings_after: list[str | None] = []  # the start-after key of each listing request stream
        self._count = threading.Lock()  # ranged listings serve pages from several threads

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def check(self, prefix: str) -> None:
        return None

    def list_pages(self, prefix: str) -> Iterator[Sequence[ObjectInfo]]:
        return self._pages_after(prefix, None)

    def list_ranges(self, prefix: str, boundaries: Sequence[str]) -> Iterator[Sequence[ObjectInfo]]:
        return ranged_pages(lambda after: self._pages_after(prefix, after), boundaries, 4)

    def _pages_after(self, prefix: str, after: str | None) -> Iterator[Sequence[ObjectInfo]]:
        """Pages as S3 serves ``ListObjectsV2`` with ``start-after``: keys after ``after``, in byte order."""
        self.listings_after.append(after)
        keys = sorted(k for k in self.objects if k.startswith(prefix) and (after is None or k > after))
        if self.shuffled:
            keys = keys[1::2] + keys[::2]
        for start in range(0, len(keys), self.page_size):
            page = [
                ObjectInfo(k, len(self.objects[k]), hashlib.md5(self.objects[k]).hexdigest())
                for k in keys[start : start + self.page_size]
            ]
            with self._count:
                self.pages_served += 1
                self.max_page_seen = max(self.max_page_seen, len(page))
            yield page

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        if key in self.faults:
            raise self.faults[key]
        if key in self.vanish_on_read:
            self.objects.pop(key, None)
        if key not in self.objects:
            raise ObjectReadError("object not found (deleted since it was listed?)", transient=True)
        return self.objects[key]

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        out: list[bytes | ObjectReadError] = []
        for key in keys:
            try:
                out.append(self.read(key))
            except ObjectReadError as exc:
                out.append(exc)
        return out

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
