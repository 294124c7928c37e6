"""Reading a mixed list of locations — local files, ``s3://bucket/key`` and ``http(s)://`` URLs — behind the
``read_many`` half of the object-source protocol, for manifests whose lines name all three.

``s3://`` goes through the same obstore source as ``s3://`` pools (one per bucket: same credentials, concurrency,
retries); ``http(s)://`` through ``HttpFetcher`` (allowed hosts only); anything else is a local path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from curation.objects.http import HttpFetcher, is_http_uri
from curation.objects.source import (
    ObjectInfo,
    ObjectReadError,
    ObjectSource,
    ReadsOneByMany,
    is_s3_uri,
    parse_s3_uri,
)

SUPPORTED_SCHEMES = ("s3", "http", "https")


def uri_scheme(text: str) -> str | None:
    """The scheme of ``text`` when it is written as a URI (``scheme://``), lowercase; None for a path."""
    head, sep, _ = text.partition("://")
    if not sep or not head or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return None
    return head.lower() if head[0].isalpha() else None


def split_s3(uri: str) -> tuple[str, str]:
    location = parse_s3_uri(uri)
    return location.bucket, location.prefix


class UriReader(ReadsOneByMany):
    """Reads local paths, ``s3://`` objects and allowed ``http(s)://`` URLs by their location text."""

    bucket = ""

    def __init__(self, s3_settings: Any, http: HttpFetcher) -> None:
        self.s3_settings = s3_settings
        self.http = http
        self._buckets: dict[str, ObjectSource] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_buckets"] = {}
        return state

    def bucket_source(self, bucket: str) -> ObjectSource:
        """The S3 source of ``bucket`` (made once; credentials from ``pool.s3.*`` and the AWS environment)."""
        source = self._buckets.get(bucket)
        if source is None:
            from curation.objects.s3 import S3ObjectSource, resolve_credentials

            s3 = self.s3_settings
            source = S3ObjectSource(
                bucket,
                resolve_credentials(s3),
                max_concurrency=s3.max_concurrency,
                timeout_s=s3.timeout_s,
                max_retries=s3.max_retries,
            )
            self._buckets[bucket] = source
        return source

    def stat_s3(self, uris: Sequence[str]) -> list[ObjectInfo | ObjectReadError]:
        """Size and ETag of each ``s3://`` URI (one HEAD each, concurrently per bucket), in order."""
        out: list[ObjectInfo | ObjectReadError | None] = [None] * len(uris)
        by_bucket: dict[str, list[tuple[int, str]]] = {}
        for i, uri in enumerate(uris):
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append((i, key))
        for bucket, jobs in by_bucket.items():
            source = self.bucket_source(bucket)
            stats = source.stat_many([k for _, k in jobs])  # type: ignore[attr-defined]
            for (i, _), result in zip(jobs, stats, strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        out: list[bytes | ObjectReadError | None] = [None] * len(keys)
        by_bucket: dict[str, list[tuple[int, str]]] = {}
        urls: list[tuple[int, str]] = []
        for i, key in enumerate(keys):
            if is_s3_uri(key):
                try:
                    bucket, object_key = split_s3(key)
                except Exception as exc:  # PoolError: a malformed URI fails that item only
                    out[i] = ObjectReadError(str(exc), transient=False)
                    continue
                by_bucket.setdefault(bucket, []).append((i, object_key))
            elif is_http_uri(key):
                urls.append((i, key))
            else:
                out[i] = _read_file(key)
        for bucket, jobs in by_bucket.items():
            for (i, _), result in zip(jobs, self.bucket_source(bucket).read_many([k for _, k in jobs]), strict=True):
                out[i] = result
        for (i, _), fetched in zip(urls, self.http.read_many([u for _, u in urls]), strict=True):
            out[i] = fetched
        return [r if r is not None else ObjectReadError("not read", transient=True) for r in out]


def _read_file(path: str) -> bytes | ObjectReadError:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return ObjectReadError("file not found", transient=True)
    except OSError as exc:
        return ObjectReadError(f"cannot read: {exc.strerror or exc}", transient=False)


def uri_reader(pool_settings: Any) -> UriReader:
    from curation.objects.http import http_fetcher

    return UriReader(pool_settings.s3, http_fetcher(pool_settings.http))
