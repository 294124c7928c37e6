"""Manifests whose lines mix local paths, ``s3://`` objects (a real SeaweedFS) and ``http(s)://`` URLs (a loopback
HTTP server): the same object-store path as s3:// pools, allowed hosts only for http, ETags for rescans."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from curation.config import load_settings
from curation.devtools.synthetic import make_pool
from curation.jobs.score import scan, score
from curation.objects.http import HttpFetcher, host_of, refusal
from curation.objects.source import ObjectReadError
from curation.scoring.pool import item_location, read_manifest
from store import Store


class _Images(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[tuple[str, str | None]]] = []  # (path, If-None-Match)
    redirect_to: ClassVar[str] = ""

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("If-None-Match")))
        if self.path == "/redirect.png":
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        if self.path == "/flaky.png":
            self.send_response(503)
            self.end_headers()
            return
        data = type(self).files.get(self.path)
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'  # an ETag, not security
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_images() -> Iterator[tuple[str, type[_Images]]]:
    handler = type("Images", (_Images,), {"files": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _settings(manifest: Path, *, endpoint: str | None = None, hosts: list[str] | None = None, **extra: Any) -> Any:
    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    overrides: dict[str, Any] = {"pool.path": str(manifest), "pool.http.allowed_hosts": hosts or []}
    overrides["pool.http.max_retries"] = 1
    overrides["pool.http.timeout_s"] = 5
    if endpoint:
        overrides.update(
            {
                "pool.s3.endpoint_url": endpoint,
                "pool.s3.access_key_id": LOCAL_ACCESS_KEY,
                "pool.s3.secret_access_key": LOCAL_SECRET_KEY,
                "pool.s3.timeout_s": 5,
                "pool.s3.max_retries": 2,
            }
        )
    overrides.update(extra)
    return load_settings(overrides=overrides, environ={})


def _content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def test_uri_lines_are_yielded_as_text_and_paths_stay_paths(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("a.jpg\ns3://bucket-x/k/b.jpg\nhttps://img.example/c.png\n# comment\n/abs/d.jpg\n")
    entries = list(read_manifest(manifest))
    assert entries == [tmp_path / "a.jpg", "s3://bucket-x/k/b.jpg", "https://img.example/c.png", Path("/abs/d.jpg")]
    assert item_location(str(tmp_path), "s3://bucket-x/k/b.jpg") == "s3://bucket-x/k/b.jpg"
    assert item_location(str(tmp_path), "a.jpg") == str(tmp_path / "a.jpg")


def test_http_hosts_are_refused_unless_configured() -> None:
    assert "pool.http.allowed_hosts (empty)" in (refusal("http://127.0.0.1:8000/a.png", []) or "")
    assert refusal("http://127.0.0.1:8000/a.png", ["127.0.0.1:8000"]) is None
    assert refusal("http://127.0.0.1:8001/a.png", ["127.0.0.1:8000"]) is not None
    assert refusal("http://user:pw@127.0.0.1:8000/a.png", ["127.0.0.1:8000"]) is not None
    assert refusal("https://IMG.example.com/a.png", ["img.example.com"]) is None
    assert host_of("https://img.example.com:443/x") == "img.example.com"


def test_http_fetcher_bounds_size_and_never_follows_a_redirect_off_the_allowed_hosts(
    http_images: tuple[str, type[_Images]],
) -> None:
    base, handler = http_images
    handler.files["/big.png"] = b"x" * 5000
    handler.redirect_to = "http://127.0.0.2:9/elsewhere.png"
    fetcher = HttpFetcher([host_of(base)], max_bytes=1000, max_retries=1, timeout_s=5)
    with pytest.raises(ObjectReadError, match="max_bytes") as big:
        fetcher.fetch(f"{base}/big.png")
    assert not big.value.transient
    with pytest.raises(ObjectReadError, match="not allowed"):
        fetcher.fetch(f"{base}/redirect.png")
    assert not any(p == "/elsewhere.png" for p, _ in handler.requests)
    with pytest.raises(ObjectReadError, match="503") as flaky:
        fetcher.fetch(f"{base}/flaky.png")
    assert flaky.value.transient
    assert sum(p == "/flaky.png" for p, _ in handler.requests) == 2  # one retry
    closed = HttpFetcher(["127.0.0.1:9"], max_retries=0, timeout_s=2)
    with pytest.raises(ObjectReadError) as down:
        closed.fetch("http://127.0.0.1:9/a.png")
    assert down.value.transient


@pytest.mark.slow
def test_manifest_mixing_local_s3_and_http_lines(
    seaweedfs: Any, http_images: tuple[str, type[_Images]], tmp_path: Path, tiny_cls_model: Path
) -> None:
    files = make_pool(tmp_path / "imgs", n=9, size=48, seed=21)
    local, on_s3, on_http = files[:3], files[3:6], files[6:]
    bucket = f"m-{uuid.uuid4().hex[:10]}"
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    for path in on_s3:
        client.put_object(Bucket=bucket, Key=f"frames/{path.name}", Body=path.read_bytes())
    base, handler = http_images
    for path in on_http:
        handler.files[f"/{path.name}"] = path.read_bytes()
    manifest = tmp_path / "imgs" / "manifest.txt"
    lines = [p.name for p in local]
    lines += [f"s3://{bucket}/frames/{p.name}" for p in on_s3]
    lines += [f"{base}/{p.name}" for p in on_http]
    lines += [f"s3://{bucket}/frames/missing.jpg", "ftp://127.0.0.1/x.jpg", f"http://127.0.0.1:9/{on_http[0].name}"]
    manifest.write_text("\n".join(lines) + "\n")

    # no allowed host: the http lines are reported, never fetched
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    _, pool_id, report = scan(store, _settings(manifest, endpoint=seaweedfs.endpoint))
    assert handler.requests == []
    reasons = dict(report.skipped)
    assert all("allowed_hosts" in reasons[f"{base}/{p.name}"] for p in on_http)
    assert "unsupported URI scheme ftp://" in reasons["ftp://127.0.0.1/x.jpg"]
    assert "tried again next run" in reasons[f"s3://{bucket}/frames/missing.jpg"]
    assert report.files == 6

    settings = _settings(manifest, endpoint=seaweedfs.endpoint, hosts=[host_of(base)])
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"path": str(tiny_cls_model)})})
    outcome = score(store, settings)
    assert outcome.scan.files == 9
    assert outcome.scoring.scored == 9 and outcome.scoring.failed == 0
    # content ids are the SHA-256 of the bytes, wherever they were read from
    paths = dict(zip(store.items.paths(pool_id, [t for t in range(1, 10)]), range(1, 10), strict=True))
    expected = {p.name for p in local} | {f"s3://{bucket}/frames/{p.name}" for p in on_s3}
    expected |= {f"{base}/{p.name}" for p in on_http}
    assert set(paths) == expected
    by_content = store.items.by_content([_content_id(p.read_bytes()) for p in files])
    assert len(by_content) == 9
    # read once by the scan (content id) and once to decode it for scoring, as for s3:// pools
    assert sum(p == f"/{on_http[0].name}" for p, _ in handler.requests) == 2

    # rescan: s3 objects unchanged (HEAD only), http lines answer 304 to the stored ETag: nothing downloaded
    handler.requests.clear()
    _, _, again = scan(store, settings)
    assert again.hashed == 0 and again.files == 9
    assert handler.requests and all(tag is not None for _, tag in handler.requests)
    # a changed object is read again, an object gone is forgotten
    client.put_object(Bucket=bucket, Key=f"frames/{on_s3[0].name}", Body=on_http[0].read_bytes())
    client.delete_object(Bucket=bucket, Key=f"frames/{on_s3[1].name}")
    _, _, changed = scan(store, settings)
    assert changed.hashed == 1
    assert changed.removed == 0  # a vanished object is transient: kept until it is readable again
    assert f"s3://{bucket}/frames/{on_s3[1].name}" in dict(changed.skipped)
