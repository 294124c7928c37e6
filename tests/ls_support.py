"""Helpers for tests against a real Label Studio: fresh annotators, raw API calls, and the loopback proxy that
injects faults — for Label Studio *after* forwarding (the server has committed, the client sees a failure), and
for the real S3 server in front of object reads (``FaultProxy(..., keep_host=True)``)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


class LSApi:
    """Raw calls to the test server, authenticated with a token."""

    def __init__(self, url: str, token: str, email: str = "", password: str = "") -> None:
        self.url = url
        self.email = email  # a fresh annotator's login, for the browser
        self.password = password
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Token {token}"}, timeout=30, trust_env=False
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params or None)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def project_by_title(self, title: str) -> dict[str, Any]:
        found = [p for p in self.get("/api/projects", title=title, page_size=100)["results"] if p["title"] == title]
        assert found, f"no project {title!r}"
        return self.get(f"/api/projects/{found[0]['id']}")

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            response = self.client.get(
                "/api/tasks", params={"project": project_id, "page": page, "page_size": 100, "fields": "all"}
            )
            if response.status_code == 404:
                return out
            response.raise_for_status()
            tasks = response.json()["tasks"]
            out.extend(tasks)
            if len(tasks) < 100:
                return out
            page += 1

    def predictions(self, project_id: int) -> list[dict[str, Any]]:
        return list(self.get("/api/predictions", project=project_id))

    def annotate(self, task_id: int, result: list[dict[str, Any]], cancelled: bool = False) -> dict[str, Any]:
        return self.post(
            f"/api/tasks/{task_id}/annotations", {"result": result, "was_cancelled": cancelled, "lead_time": 2.5}
        )


ANNOTATOR_PASSWORD = "annotator-pw-123"


def fresh_annotator(url: str) -> LSApi:
    """Sign up a new user through the web form (the API cannot set passwords) and return a client with their
    legacy token. A fresh user holds no locked task, so /next shows the queue's head."""
    email = f"annotator-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30, trust_env=False) as web:
        web.get("/user/signup/")
        csrf = web.cookies.get("csrftoken")
        response = web.post(
            "/user/signup/",
            data={"email": email, "password": ANNOTATOR_PASSWORD, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{url}/user/signup/"},
        )
        assert response.status_code in (302, 303), response.text[:300]
        token = web.get("/api/current-user/token").json()["token"]
    return LSApi(url, token, email, ANNOTATOR_PASSWORD)


class FaultProxy:
    """A loopback proxy for fault tests, in front of Label Studio or of the real S3 server (SeaweedFS).

    Label Studio (task imports): ``502-once`` / ``502-after-import`` answer 502 after the server committed,
    ``502-before-import`` without forwarding (nothing committed), ``hang-after-import`` hangs after the server
    committed (so that the test can kill the client at exactly that point), and ``504-slow`` answers 504 at once
    while the import is still on its way: the server commits it only when the test calls ``land()``, as behind a
    proxy whose timeout is shorter than the server's import.

    S3 (object GETs, ``GET /bucket/key``, not listings; counted in ``gets``): ``503`` answers ``503 SlowDown`` to
    the first ``n`` GETs of each key, ``reset`` closes the connection with a TCP reset (the keys in
    ``reset_keys``, or all), ``slow`` waits ``delay_s`` before forwarding, ``deny`` answers ``403 AccessDenied``
    for the keys in ``denied``. S3 signatures cover the Host header: ``keep_host=True`` forwards it unchanged, so
    the server verifies the client's signature as if there were no proxy.
    """

    def __init__(
        self, upstream: str, mode: str = "pass", *, keep_host: bool = False, n: int = 1, delay_s: float = 0.0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.keep_host = keep_host
        self.n = n
        self.delay_s = delay_s
        self.denied: set[str] = set()
        self.reset_keys: set[str] | None = None  # None: every key (mode "reset")
        self.gets: Counter[str] = Counter()  # object GETs that reached the proxy, by path
        self.lists = 0
        self.imports_forwarded = 0
        self.committed = threading.Event()
        self._release = threading.Event()
        self._slow: tuple[str, bytes | None, dict[str, str]] | None = None
        self._lock = threading.Lock()
        self._client = httpx.Client(trust_env=False, timeout=120)  # thread-safe, keeps upstream connections
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real proxies and S3 clients use

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, content_type: str = "text/html") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _object_fault(self) -> bool:
                """The S3 faults; True when the request was answered (or dropped) here."""
                path = self.path.split("?", 1)[0]
                is_object_get = self.command == "GET" and path.count("/") >= 2 and not path.endswith("/")
                with proxy._lock:
                    if self.command == "GET" and not is_object_get:
                        proxy.lists += 1
                    if not is_object_get:
                        return False
                    proxy.gets[path] += 1
                    count = proxy.gets[path]
                if proxy.mode == "503" and count <= proxy.n:
                    self._answer(503, SLOW_DOWN, "application/xml")
                    return True
                if proxy.mode == "deny" and path in proxy.denied:
                    self._answer(403, ACCESS_DENIED, "application/xml")
                    return True
                if proxy.mode == "reset" and (proxy.reset_keys is None or path in proxy.reset_keys):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return True
                if proxy.mode == "slow":
                    time.sleep(proxy.delay_s)
                return False

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self._object_fault():
                    return
                is_import = self.command == "POST" and "/import" in self.path and "predictions" not in self.path
                if is_import and proxy.mode == "502-before-import":
                    proxy.mode = "pass"
                    self._answer(502, b"")
                    return
                dropped = ("content-length",) if proxy.keep_host else ("host", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                if is_import and proxy.mode == "504-slow":
                    proxy.mode = "pass"
                    proxy._slow = (self.path, body, headers)
                    self._answer(504, b"<h1>504</h1>\n\n\n")
                    return
                upstream = proxy._client.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                if is_import and proxy.mode in ("502-once", "502-after-import", "hang-after-import"):
                    proxy.imports_forwarded += 1
                    proxy.committed.set()
                    if proxy.mode == "hang-after-import":
                        proxy._release.wait(300)
                        self.close_connection = True
                        return
                    self._answer(502, b"<h1>502</h1>\n\n\n")
                    if proxy.mode == "502-once":
                        proxy.mode = "pass"
                    return
                payload = upstream.content
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def object_gets(self) -> int:
        """Object GETs that reached the proxy so far (S3)."""
        with self._lock:
            return sum(self.gets.values())

    def land(self) -> dict[str, Any]:
        """The import held by ``504-slow`` reaches the server and commits now; returns the server's answer."""
        assert self._slow is not None, "no import is held"
        (path, body, headers), self._slow = self._slow, None
        response = self._client.post(self.upstream + path, content=body, headers=headers)
        response.raise_for_status()
        return dict(response.json())

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._client.close()
