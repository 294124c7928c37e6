"""The object-source protocol: list a prefix page by page, read one object's bytes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
