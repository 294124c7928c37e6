"""``http(s)://`` images, fetched only from configured hosts (``pool.http.allowed_hosts``).

A manifest line or a task's image reference is data someone else wrote: following it to any host would let it
make curate call internal services (SSRF). Only hosts named in the config are fetched — redirects included, each
hop checked again — with a size limit, a timeout and retries with backoff. Failures are data
(``ObjectReadError``), never crashes; a timeout, a reset or a 5xx after the retries is transient (tried again next
run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from curation.objects.source import ObjectReadError

MAX_REDIRECTS = 3
_MAX_BACKOFF_S = 4.0


def is_http_uri(text: str) -> bool:
    return text[:7].lower() == "http://" or text[:8].lower() == "https://"


def host_of(url: str) -> str:
    """``host`` or ``host:port`` as written in ``pool.http.allowed_hosts`` (lowercase; default ports dropped)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return ""
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host if port is None or port == default else f"{host}:{port}"


def refusal(url: str, allowed_hosts: Sequence[str]) -> str | None:
    """Why ``url`` must not be fetched (None: it may)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL ({parts.scheme or 'no scheme'})"
    if "@" in parts.netloc:
        return "the URL carries a user name or password"
    host = host_of(url)
    if not host:
        return "the URL has no valid host"
    if not allowed_hosts:
        return f"host {host} is not allowed: http(s) images are fetched only from pool.http.allowed_hosts (empty)"
    if host not in allowed_hosts and (parts.hostname or "").lower() not in allowed_hosts:
        return f"host {host} is not in pool.http.allowed_hosts: not fetched"
    return None


@dataclass(frozen=True)
class Fetched:
    """The bytes (None: not modified since ``etag``) and the server's ETag."""

    data: bytes | None
    etag: str | None


class HttpFetcher:
    """Bounded GETs from allowed hosts. Thread-safe; the HTTP client is made lazily per process."""

    def __init__(
        self,
        allowed_hosts: Sequence[str],
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        max_bytes: int = 64 * 1024 * 1024,
        max_concurrency: int = 16,
    ) -> None:
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_bytes = max_bytes
        self.max_concurrency = max_concurrency
        self._client: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False)
            return self._client

    def refusal(self, url: str) -> str | None:
        return refusal(url, self.allowed_hosts)

    def fetch(self, url: str, etag: str | None = None) -> Fetched:
        """GET ``url`` (``If-None-Match: etag`` when given); raises ``ObjectReadError``."""
        import httpx

        reason = self.refusal(url)
        if reason is not None:
            raise ObjectReadError(reason, transient=False)
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        attempt = 0
        while True:
            try:
                return self._once(url, headers)
            except ObjectReadError as exc:
                if not exc.transient or attempt >= self.max_retries:
                    raise
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.max_retries:
                    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
                    raise ObjectReadError(f"download {kind} ({type(exc).__name__})", transient=True) from None
            time.sleep(min(0.2 * 2**attempt, _MAX_BACKOFF_S))
            attempt += 1

    def _once(self, url: str, headers: dict[str, str]) -> Fetched:
        client = self._http()
        for _hop in range(MAX_REDIRECTS + 1):
            with client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                    target = urljoin(url, response.headers["location"])
                    reason = self.refusal(target)
                    if reason is not None:
                        raise ObjectReadError(f"redirected to a host that is not allowed: {reason}", transient=False)
                    url = target
                    continue
                if status == 304:
                    return Fetched(None, _etag(response.headers.get("etag")))
                if status >= 500 or status in (408, 429):
                    raise ObjectReadError(f"the server answered {status}", transient=True)
                if status == 404:
                    raise ObjectReadError("not found (404)", transient=True)
                if status >= 400:
                    raise ObjectReadError(f"the server refused the download ({status})", transient=False)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ObjectReadError(f"larger than pool.http.max_bytes ({self.max_bytes} bytes)", transient=False)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ObjectReadError(
                            f"larger than pool.http.max_bytes ({self.max_bytes} bytes)", transient=False
                        )
                    chunks.append(chunk)
                return Fetched(b"".join(chunks), _etag(response.headers.get("etag")))
        raise ObjectReadError(f"more than {MAX_REDIRECTS} redirects", transient=False)

    def read(self, url: str) -> bytes:
        data = self.fetch(url).data
        return data if data is not None else b""

    def fetch_many(
        self, urls: Sequence[str], etags: Sequence[str | None] | None = None
    ) -> list[Fetched | ObjectReadError]:
        """Several downloads concurrently, in order; a failure in place of its result."""
        tags = list(etags) if etags is not None else [None] * len(urls)

        def one(job: tuple[str, str | None]) -> Fetched | ObjectReadError:
            try:
                return self.fetch(job[0], job[1])
            except ObjectReadError as exc:
                return exc

        if not urls:
            return []
        with ThreadPoolExecutor(min(self.max_concurrency, len(urls))) as pool:
            return list(pool.map(one, zip(urls, tags, strict=True)))

    def read_many(self, urls: Sequence[str]) -> list[bytes | ObjectReadError]:
        out: list[bytes | ObjectReadError] = []
        for result in self.fetch_many(urls):
            out.append(result if isinstance(result, ObjectReadError) else (result.data or b""))
        return out


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def http_fetcher(settings: Any) -> HttpFetcher:
    """The fetcher for ``pool.http.*``."""
    return HttpFetcher(
        settings.allowed_hosts,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        max_bytes=settings.max_bytes,
        max_concurrency=settings.max_concurrency,
    )
