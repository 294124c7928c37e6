"""``curate serve``: an ASGI app speaking Label Studio 1.23's ML-backend protocol, a webhook receiver, metrics.

A thin adapter, like ``cli.py``: each handler parses and checks its request, calls one job
(``curation.jobs.predict``, ``curation.jobs.turns``, ``curation.jobs.status``) and answers. Label Studio calls
``GET /health``, ``POST /setup`` (answered with the registry's current model version), ``POST /predict`` (tasks →
predictions), ``POST /webhook`` (its webhooks, and ``START_TRAINING``), ``POST /train`` and ``GET /versions``;
Prometheus scrapes ``GET /metrics``.

Security: with ``serve.username``/``serve.password`` set, every endpoint but ``/health`` asks for HTTP basic auth
(Label Studio sends it for ML backends); with ``serve.webhook_secret`` set, ``/webhook`` and ``/train`` need the
``X-Curate-Secret`` header (or basic auth: Label Studio's own ``START_TRAINING`` call carries only that). Bodies
above ``serve.max_body_bytes`` and batches above ``serve.max_tasks`` are refused (413). Every error is a JSON
``{"error": "..."}`` with a 4xx/5xx status and one clear line, never a traceback; request bodies are never logged
(``/setup`` carries a Label Studio token), and no answer or metric holds a secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from curation.config import Settings
from curation.errors import (
    ConfigError,
    CurateError,
    LabelStudioError,
    ModelLoadError,
    ProjectConfigMismatchError,
    exit_code_for,
)
from curation.jobs.common import open_store
from curation.jobs.predict import ModelCache, interface_for, predict
from curation.jobs.status import store_state
from curation.jobs.turns import TurnResult, TurnScheduler
from curation.labelstudio.backend import SECRET_HEADER, WEBHOOK_ACTIONS
from curation.metrics import ServerMetrics
from store import Store
from store.errors import DatabaseError, LockHeldError

logger = logging.getLogger("curate.serve")

TRIGGERS = frozenset(WEBHOOK_ACTIONS)
TRAINING = "START_TRAINING"
ENDPOINTS = frozenset({"/health", "/setup", "/predict", "/webhook", "/train", "/versions", "/metrics", "/status"})


class RequestError(Exception):
    """A request curate refuses: its status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class BodyLimit:
    """Refuses a request whose Content-Length is above ``limit`` bytes (413) before anything reads it; a body
    without one (chunked) is counted while it streams in (``body`` in ``create_app``)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(self.limit, send)
            return
        await self.app(scope, receive, send)


def _too_large_text(limit: int) -> str:
    return f"request body larger than {limit} bytes (serve.max_body_bytes)"


async def _too_large(limit: int, send: Send) -> None:
    body = json.dumps({"error": _too_large_text(limit)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _status_for(exc: BaseException) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, ProjectConfigMismatchError | ConfigError):
        return 422
    if isinstance(exc, LockHeldError | ModelLoadError | DatabaseError):
        return 503
    if isinstance(exc, LabelStudioError):
        return 502
    return 500


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    scheduler: TurnScheduler | None = None,
    ls: Any = None,
) -> FastAPI:
    """The app for one database and one Label Studio project. ``store``, ``scheduler`` and ``ls`` replace the
    defaults in tests (``ls``: a ``LabelStudioAPI``; by default connected on the first download)."""
    cfg = settings.serve
    store = store or open_store(settings)
    models = ModelCache()
    metrics = ServerMetrics(lambda: _state(store, settings))

    def finished(result: TurnResult) -> None:
        metrics.turns.labels(outcome=result.outcome).inc()
        metrics.duration.labels(command="loop").set(result.seconds)
        if result.outcome == "ok":
            metrics.last_success.labels(command="loop").set(time.time())
        if result.error_kind:
            metrics.errors.labels(kind=result.error_kind).inc()
        scoring = (result.summary or {}).get("scoring") or {}
        for outcome in ("scored", "failed", "invalid", "retry_later"):
            if scoring.get(outcome):
                metrics.items_scored.labels(outcome=outcome).inc(scoring[outcome])
        if result.outcome in ("failed", "training_failed"):
            logger.warning("loop turn %s: %s", result.outcome, result.error)
        else:
            logger.info("loop turn %s in %.1f s", result.outcome, result.seconds)

    turns = scheduler or TurnScheduler(settings, debounce_s=cfg.debounce_s)
    turns.on_finish = finished
    ls_lock = threading.Lock()
    ls_client: list[Any] = [ls]

    def label_studio() -> Any:
        with ls_lock:
            if ls_client[0] is None and settings.label_studio.url and settings.serve.download_dir:
                from curation.labelstudio.project import connect

                ls_client[0] = connect(settings.label_studio)
            return ls_client[0]

    app = FastAPI(title="curate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.turns = turns
    app.state.models = models
    app.state.metrics = metrics

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        status = _status_for(exc)
        if status == 500:
            logger.error("internal error on %s: %s", request.url.path, type(exc).__name__)
            message = f"internal error ({type(exc).__name__}); see the curate serve log"
        else:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = "request" if isinstance(exc, RequestError) else _kind(exc)
        metrics.errors.labels(kind=kind).inc()
        headers = dict(exc.headers) if isinstance(exc, RequestError) else {}
        if isinstance(exc, LockHeldError):
            headers["Retry-After"] = "30"
            message = f"another curate run holds the lock; try again shortly ({message})"
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    # Expected errors are answered here; anything else (a bug) gets the same one-line JSON 500, and its traceback
    # goes to the server log only.
    for expected in (RequestError, CurateError, DatabaseError, LockHeldError, Exception):
        app.add_exception_handler(expected, failed)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.requests.labels(endpoint=path, status=str(response.status_code)).inc()
        return response

    def check_basic(request: Request) -> bool:
        """True when basic auth is configured and the request carries the right credentials."""
        if not (cfg.username and cfg.password):
            return False
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), cfg.username.encode())
        ok_password = hmac.compare_digest(password.encode(), cfg.password.get_secret_value().encode())
        return ok_user and ok_password

    def require_basic(request: Request) -> None:
        if cfg.username and cfg.password and not check_basic(request):
            raise RequestError(401, "HTTP basic auth required", {"WWW-Authenticate": 'Basic realm="curate"'})

    def require_secret(request: Request) -> None:
        secret = cfg.webhook_secret.get_secret_value() if cfg.webhook_secret else ""
        if secret:
            given = request.headers.get(SECRET_HEADER, "")
            if hmac.compare_digest(given.encode(), secret.encode()) or check_basic(request):
                return
            raise RequestError(403, f"missing or wrong {SECRET_HEADER} header")
        require_basic(request)

    async def body(request: Request) -> dict[str, Any]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise RequestError(413, _too_large_text(cfg.max_body_bytes))
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            raise RequestError(400, "empty request body: expected a JSON object")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestError(400, f"expected a JSON object, got {type(data).__name__}")
        return data

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "curate"}

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        require_basic(request)
        data = await body(request)
        schema = data.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise RequestError(400, "'schema' must be the labeling config (a string)")
        mv = await run_in_threadpool(_current, store)
        if schema:
            interface_for(schema, mv)  # a project whose labels do not match the model fails here, by name
        return {"model_version": mv.version}

    @app.get("/versions")
    async def versions(request: Request) -> dict[str, Any]:
        require_basic(request)
        found = await run_in_threadpool(store.models.versions)
        return {"versions": [mv.version for mv, _ in found]}

    @app.post("/predict")
    async def predict_endpoint(request: Request) -> dict[str, Any]:
        require_basic(request)
        data = await body(request)
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError(400, "'tasks' must be a list of task objects")
        if len(tasks) > cfg.max_tasks:
            raise RequestError(413, f"{len(tasks)} tasks in one request; at most {cfg.max_tasks} (serve.max_tasks)")
        label_config = data.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise RequestError(400, "'label_config' must be a string")
        client = await run_in_threadpool(label_studio)
        report = await run_in_threadpool(
            predict, store, settings, tasks, label_config or None, models=models, ls=client
        )
        metrics.predict_tasks.labels(source="store").inc(report.from_store)
        metrics.predict_tasks.labels(source="scored").inc(report.scored)
        metrics.predict_tasks.labels(source="refused").inc(len(report.refused))
        if report.scored:
            metrics.items_scored.labels(outcome="scored").inc(report.scored)
        if report.unreadable:
            metrics.items_scored.labels(outcome="failed").inc(report.unreadable)
        for refused in report.refused:
            logger.warning("no prediction for task %s: %s", refused["task"], refused["reason"])
        return {"results": report.results, "model_version": report.model_version}

    async def schedule(request: Request, default_action: str | None) -> dict[str, Any]:
        require_secret(request)
        data = await body(request)
        action = data.get("action", default_action)
        if not isinstance(action, str):
            raise RequestError(400, "'action' must be a string")
        if action not in TRIGGERS and action != TRAINING:
            return {"scheduled": False, "reason": f"action {action} does not change labels"}
        project = data.get("project")
        if isinstance(project, dict) and not _our_project(project, settings.label_studio.project):
            return {"scheduled": False, "reason": "another project"}
        state = turns.request(action)
        metrics.turn_pending.set(1)
        return {"scheduled": True, "running": state.running, "due_in_s": state.due_in_s}

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        return await schedule(request, None)

    @app.post("/train")
    async def train(request: Request) -> dict[str, Any]:
        return await schedule(request, TRAINING)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        require_basic(request)
        state = turns.snapshot()
        metrics.turn_running.set(1 if state.running else 0)
        metrics.turn_pending.set(1 if state.pending else 0)
        payload = await run_in_threadpool(metrics.render)
        return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/status")
    async def turn_status(request: Request) -> dict[str, Any]:
        require_basic(request)
        return {"turns": vars(turns.snapshot()), "model_loaded": models.loaded}

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app


def _current(store: Store) -> Any:
    from curation.jobs.common import current_or_fail

    return current_or_fail(store)


def _our_project(project: dict[str, Any], configured: str | None) -> bool:
    if not configured:
        return True
    return str(project.get("id")) == configured or project.get("title") == configured


def _kind(exc: BaseException) -> str:
    from curation.errors import ExitCode

    if isinstance(exc, CurateError | DatabaseError | LockHeldError):
        names = {v: k.lower() for k, v in vars(ExitCode).items() if k.isupper()}
        return names.get(exit_code_for(exc), "internal")
    return "internal"


def _state(store: Store, settings: Settings) -> dict[str, Any] | None:
    try:
        return store_state(store, settings)
    except (CurateError, DatabaseError):
        return None
