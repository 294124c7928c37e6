"""Helpers for tests against a real Label Studio: fresh annotators, raw API calls, and a loopback proxy that
injects faults *after* forwarding (the server has committed, the client sees a failure)."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


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
    """Forwards everything to Label Studio; for task imports it can answer 502 after the server committed, 502
    without forwarding (nothing committed), hang after the server committed (so that the test can kill the
    client at exactly that point), or — ``504-slow`` — answer 504 at once while the import is still on its way:
    the server commits it only when the test calls ``land()``, as behind a proxy whose timeout is shorter than
    the server's import."""

    def __init__(self, upstream: str, mode: str = "pass") -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.imports_forwarded = 0
        self.committed = threading.Event()
        self._release = threading.Event()
        self._slow: tuple[str, bytes | None, dict[str, str]] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                is_import = self.command == "POST" and "/import" in self.path and "predictions" not in self.path
                if is_import and proxy.mode == "502-before-import":
                    proxy.mode = "pass"
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                if is_import and proxy.mode == "504-slow":
                    proxy.mode = "pass"
                    proxy._slow = (self.path, body, headers)
                    self.send_response(504)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "15")
                    self.end_headers()
                    self.wfile.write(b"<h1>504</h1>\n\n\n")
                    return
                with httpx.Client(trust_env=False, timeout=120) as client:
                    upstream = client.request(self.command, proxy.upstream + self.path, content=body, headers=headers)
                if is_import and proxy.mode != "pass":
                    proxy.imports_forwarded += 1
                    proxy.committed.set()
                    if proxy.mode == "hang-after-import":
                        proxy._release.wait(300)
                        return
                    self.send_response(502)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "15")
                    self.end_headers()
                    self.wfile.write(b"<h1>502</h1>\n\n\n")
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
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def land(self) -> dict[str, Any]:
        """The import held by ``504-slow`` reaches the server and commits now; returns the server's answer."""
        assert self._slow is not None, "no import is held"
        (path, body, headers), self._slow = self._slow, None
        with httpx.Client(trust_env=False, timeout=120) as client:
            response = client.post(self.upstream + path, content=body, headers=headers)
        response.raise_for_status()
        return dict(response.json())

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
