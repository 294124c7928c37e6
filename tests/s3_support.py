"""A loopback proxy in front of the real S3 server (SeaweedFS) that injects faults, and counts object reads.

It forwards requests unchanged, Host header included (S3 signatures cover it), so the server verifies the
client's signature as if there were no proxy. Faults apply to object GETs (``GET /bucket/key``, not listings):
``503``: answer ``503 SlowDown`` to the first ``n`` GETs of each key, ``reset``: close the connection with a TCP
reset instead of answering, ``slow``: wait ``delay_s`` before forwarding, ``deny``: ``403 AccessDenied`` for the
keys in ``denied``.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


class S3FaultProxy:
    def __init__(self, upstream: str, mode: str = "pass", n: int = 1, delay_s: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.mode = mode
        self.n = n
        self.delay_s = delay_s
        self.denied: set[str] = set()
        self.reset_keys: set[str] | None = None  # None: every key (mode "reset")
        self.gets: Counter[str] = Counter()  # object GETs that reached the proxy, by path
        self.lists = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("?", 1)[0]
                is_object_get = self.command == "GET" and path.count("/") >= 2 and not path.endswith("/")
                if self.command == "GET" and not is_object_get:
                    with proxy._lock:
                        proxy.lists += 1
                if is_object_get:
                    with proxy._lock:
                        proxy.gets[path] += 1
                        count = proxy.gets[path]
                    if proxy.mode == "503" and count <= proxy.n:
                        return self._answer(503, SLOW_DOWN)
                    if proxy.mode == "deny" and path in proxy.denied:
                        return self._answer(403, ACCESS_DENIED)
                    if proxy.mode == "reset" and (proxy.reset_keys is None or path in proxy.reset_keys):
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        self.connection.close()
                        return
                    if proxy.mode == "slow":
                        time.sleep(proxy.delay_s)
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    upstream.close()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def object_gets(self) -> int:
        with self._lock:
            return sum(self.gets.values())

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
