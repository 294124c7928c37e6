"""S3 and S3-compatible object stores through obstore (Rust ``object_store``; chosen by a measurement, see the
README's "Object storage").

Credentials follow the AWS conventions, the ``pool.s3.*`` config keys first: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` (read from ``~/.aws/credentials`` and
``~/.aws/config``), ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for S3-compatible servers. Secrets live only in memory: every message that leaves this
module has them replaced by ``***`` and ``repr`` never shows them.
"""

from __future__ import annotations

import asyncio
import configparser
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from curation.errors import ConfigError, ObjectStoreError
from curation.objects.source import ObjectInfo, ObjectReadError, ranged_pages

_T = TypeVar("_T")

DEFAULT_REGION = "us-east-1"
PAGE_SIZE = 1000  # S3's own maximum per ListObjectsV2 page


@dataclass(frozen=True)
class S3Credentials:
    """Resolved connection settings. Secrets are excluded from ``repr``."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None

    @property
    def endpoint_label(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def redact(self, text: str) -> str:
        for secret in (self.secret_access_key, self.session_token, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


def _profile_values(profile: str, env: Mapping[str, str]) -> dict[str, str]:
    """Keys of ``profile`` in the shared credentials and config files (credentials file first)."""
    home = Path(env.get("HOME") or Path.home())
    config_section = profile if profile == "default" else f"profile {profile}"
    files = [
        (Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"), profile),
        (Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config"), config_section),
    ]
    values: dict[str, str] = {}
    found = False
    for path, section in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error) as exc:
            raise ConfigError(f"cannot read AWS file {path}: {type(exc).__name__}") from None
        if parser.has_section(section):
            found = True
            for key, value in parser.items(section):
                values.setdefault(key, value)
    if not found:
        raise ConfigError(f"AWS profile {profile!r} not found in ~/.aws/credentials or ~/.aws/config")
    return values


def resolve_credentials(settings: Any, env: Mapping[str, str] | None = None) -> S3Credentials:
    """``pool.s3.*`` first, then the AWS environment variables, then the profile's files."""
    env = os.environ if env is None else env

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None and hasattr(value, "get_secret_value") else value

    profile = settings.profile or env.get("AWS_PROFILE")
    from_profile = _profile_values(profile, env) if profile else {}
    access = secret(settings.access_key_id) or env.get("AWS_ACCESS_KEY_ID") or from_profile.get("aws_access_key_id")
    secret_key = (
        secret(settings.secret_access_key)
        or env.get("AWS_SECRET_ACCESS_KEY")
        or from_profile.get("aws_secret_access_key")
    )
    token = secret(settings.session_token) or env.get("AWS_SESSION_TOKEN") or from_profile.get("aws_session_token")
    if bool(access) != bool(secret_key):
        raise ConfigError("S3 credentials are incomplete: set both an access key id and a secret access key")
    endpoint = (
        settings.endpoint_url
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
        or from_profile.get("endpoint_url")
    )
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"pool.s3.endpoint_url must start with http:// or https://, got {endpoint!r}")
    region = settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or from_profile.get("region")
    return S3Credentials(
        endpoint.rstrip("/") if endpoint else None, region or DEFAULT_REGION, access, secret_key, token, profile
    )


class S3ObjectSource:
    """One bucket. The obstore client is made lazily in each process (DataLoader workers fork)."""

    def __init__(
        self,
        bucket: str,
        credentials: S3Credentials,
        *,
        max_concurrency: int = 32,
        timeout_s: float = 30.0,
        max_retries: int = 5,
    ) -> None:
        self.bucket = bucket
        self.credentials = credentials
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._store: Any = None
        self._pid = -1

    def __repr__(self) -> str:
        return f"S3ObjectSource(bucket={self.bucket!r}, endpoint={self.credentials.endpoint_label!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, -1
        return state

    def _client(self) -> Any:
        if self._store is None or self._pid != os.getpid():
            from obstore.store import S3Store

            c = self.credentials
            options: dict[str, Any] = {
                "timeout": f"{max(1, int(self.timeout_s))}s",
                "connect_timeout": f"{max(1, min(10, int(self.timeout_s)))}s",
                "pool_max_idle_per_host": str(self.max_concurrency),
            }
            if c.endpoint_url and c.endpoint_url.startswith("http://"):
                options["allow_http"] = True
            config: dict[str, Any] = {"region": c.region}
            if c.endpoint_url:
                config["endpoint"] = c.endpoint_url
                config["virtual_hosted_style_request"] = False
            if c.access_key_id:
                config["access_key_id"] = c.access_key_id
                config["secret_access_key"] = c.secret_access_key
                if c.session_token:
                    config["session_token"] = c.session_token
            retry = {
                "max_retries": self.max_retries,
                "retry_timeout": timedelta(seconds=max(self.timeout_s * 2, 5)),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=5),
                    "base": 2,
                },
            }
            self._store = S3Store(self.bucket, config=config, client_options=options, retry_config=retry)  # type: ignore[arg-type]
            self._pid = os.getpid()
        return self._store

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.credentials.endpoint_label}"

    def _fatal(self, exc: Exception) -> ObjectStoreError:
        """A listing failure as one clear error (the kind guessed from obstore's type and message)."""
        import obstore.exceptions as oe

        text = self.credentials.redact(str(exc))
        first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        if isinstance(exc, oe.NotFoundError) or "NoSuchBucket" in text:
            return ObjectStoreError(f"S3 {self._where()}: no such bucket")
        if isinstance(exc, oe.UnauthenticatedError | oe.PermissionDeniedError) or any(
            word in text for word in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
        ):
            return ObjectStoreError(f"S3 {self._where()}: the credentials were refused (access denied)")
        if "error sending request" in text or "connect" in text.lower() or "timed out" in text.lower():
            return ObjectStoreError(f"S3 {self._where()}: endpoint unreachable ({first})")
        return ObjectStoreError(f"S3 {self._where()}: {first}")

    def check(self, prefix: str) -> None:
        import obstore

        try:
            for _chunk in obstore.list(self._client(), prefix=prefix or None, chunk_size=1):
                break
        except Exception as exc:  # obstore raises its own BaseError subclasses (and ValueError on bad config)
            raise self._fatal(exc) from None

    def list_pages(self, prefix: str) -> Iterator[Sequence[ObjectInfo]]:
        return self._pages_after(prefix, None)

    def list_ranges(self, prefix: str, boundaries: Sequence[str]) -> Iterator[Sequence[ObjectInfo]]:
        """``ranged_pages`` over ``start-after`` listings (obstore's ``offset``), ``max_concurrency`` ranges in
        flight. Boundaries must be object keys, not "directories": SeaweedFS (4.48, checked) skips every key
        under ``a/`` when ``start-after`` is ``a`` or ``a/``; an object key, even one deleted since, is honoured."""
        self._client()  # made once here, shared by the listing threads
        return ranged_pages(lambda after: self._pages_after(prefix, after), boundaries, self.max_concurrency)

    def _pages_after(self, prefix: str, after: str | None) -> Iterator[Sequence[ObjectInfo]]:
        import obstore

        stream = obstore.list(self._client(), prefix=prefix or None, offset=after, chunk_size=PAGE_SIZE)
        while True:
            try:
                chunk = next(stream)
            except StopIteration:
                return
            except Exception as exc:
                raise self._fatal(exc) from None
            yield [_info(meta) for meta in chunk]

    def _read_error(self, key: str, exc: BaseException) -> ObjectReadError:
        import obstore.exceptions as oe

        text = self.credentials.redact(str(exc))
        if isinstance(exc, oe.NotFoundError):
            return ObjectReadError("object not found (deleted since it was listed?)", transient=True)
        if isinstance(exc, oe.PermissionDeniedError | oe.UnauthenticatedError) or "AccessDenied" in text:
            return ObjectReadError("access denied", transient=False)
        first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        return ObjectReadError(f"cannot read object: {first}", transient=True)

    def read(self, key: str) -> bytes:
        import obstore

        try:
            return bytes(obstore.get(self._client(), key).bytes())
        except Exception as exc:
            raise self._read_error(key, exc) from None

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        if not keys:
            return []
        return _run_coroutine(lambda: self._read_async(keys))

    async def _read_async(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        import obstore

        store = self._client()
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(key: str) -> bytes | ObjectReadError:
            async with gate:
                try:
                    result = await obstore.get_async(store, key)
                    return bytes(await result.bytes_async())
                except Exception as exc:
                    return self._read_error(key, exc)

        return list(await asyncio.gather(*(one(k) for k in keys)))

    def stat_many(self, keys: Sequence[str]) -> list[ObjectInfo | ObjectReadError]:
        """Size and ETag of each object (a HEAD each, concurrently), in ``keys`` order: how a manifest's
        ``s3://`` lines are checked for changes without reading them."""
        if not keys:
            return []
        import obstore

        async def all_heads() -> list[ObjectInfo | ObjectReadError]:
            store = self._client()
            gate = asyncio.Semaphore(self.max_concurrency)

            async def one(key: str) -> ObjectInfo | ObjectReadError:
                async with gate:
                    try:
                        return _info(await obstore.head_async(store, key))
                    except Exception as exc:
                        return self._read_error(key, exc)

            return list(await asyncio.gather(*(one(k) for k in keys)))

        return _run_coroutine(all_heads)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, on a private loop. Where the caller's thread
    already runs a loop (a notebook, an ASGI handler, Playwright's sync API) that loop cannot be
    re-entered, so the private loop runs in a worker thread instead."""

    def run_here() -> _T:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(make())
        finally:
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_here()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="curate-s3") as worker:
        return worker.submit(run_here).result()


def _info(meta: Mapping[str, Any]) -> ObjectInfo:
    """obstore's dict of one listed object (``path`` a str, ``size`` an int) as an ``ObjectInfo``."""
    modified = meta.get("last_modified")
    etag = meta.get("e_tag")
    return ObjectInfo(
        meta["path"],
        meta["size"],
        etag.strip('"') if etag else None,
        int(modified.timestamp() * 1e9) if modified is not None else 0,
    )
