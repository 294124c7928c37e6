"""Every HTTP call curate makes to Label Studio, behind ``LabelStudioAPI`` (a Protocol, so that tests can use an
in-memory fake), with errors made typed and safe.

- The official SDK makes the calls it has public methods for; the few endpoints it lacks (task listing with
  ``fields``/``include`` restricted — the fast path —, prediction versions) and the reads every cron turn makes
  (the key check, the project) go through an httpx client of our own, built from the same URL, key and timeout,
  with the SDK's retry rule (5xx/408/409/429 and dropped connections, exponential backoff). The SDK itself is
  imported only when a call needs it: a turn with nothing to do never loads it.
- Every failure becomes a ``LabelStudioError`` (``LabelStudioAuthError`` for a refused key) that names the server
  and what was being done; the API key never appears in a message (the SDK's own exception text includes
  response headers, so messages are built from the status code and the body's ``detail`` only).
- Task imports are sent **without retries**: the SDK retries POSTs on 5xx, and a 502 from a proxy after the
  server committed would import the same tasks twice. An import whose outcome is unknown raises
  ``ImportOutcomeUnknown``; the caller reconciles by ``curation_id`` before trying again.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from curation.errors import ConfigError, LabelStudioAuthError, LabelStudioError
from curation.redact import redact, register_secret

T = TypeVar("T")
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
_RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx: the SDK's rule
_MAX_BACKOFF_S = 60.0
PROJECT_PAGE = 100


class ImportOutcomeUnknown(LabelStudioError):
    """The import request failed in a way that may have come after the server committed (5xx, timeout,
    connection lost): the tasks may or may not exist."""


@dataclass(frozen=True)
class S3StorageSpec:
    """An S3 import storage for a project: where Label Studio (and the browser, through presigned URLs) reads an
    object-store pool. Label Studio keeps the credentials in its own database, as for any storage it is given."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    presign_ttl_min: int = 15

    def redact(self, text: str) -> str:
        for secret in (self.secret_access_key, self.session_token, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


class LabelStudioAPI(Protocol):
    """What curate asks of one Label Studio server: one method per endpoint, no curate logic. Task listings
    return ``[]`` past the last page; errors are ``LabelStudioError`` with the HTTP status."""

    url: str
    user: str | None

    def whoami(self) -> str: ...

    def project(self, project_id: int) -> dict[str, Any]: ...

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        """Projects whose title contains ``title`` (case-insensitive), each with ``id`` and ``title``."""
        ...

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]: ...

    def set_label_config(self, project_id: int, label_config: str) -> None: ...

    def local_storage_paths(self, project_id: int) -> list[str]: ...

    def add_local_storage(self, project_id: int, path: str) -> None: ...

    def s3_storage_buckets(self, project_id: int) -> list[tuple[str, str]]:
        """(bucket, prefix) of the project's S3 import storages."""
        ...

    def add_s3_storage(self, project_id: int, storage: S3StorageSpec) -> None:
        """Connect an S3 import storage (presigned URLs) so that the labeling UI loads ``s3://`` task images."""
        ...

    def set_ranking(self, project_id: int, tag: str) -> None:
        """Serve tasks by the lowest score among predictions tagged ``tag``."""
        ...

    def set_prelabeling(self, project_id: int, on: bool) -> None:
        """The project's "Use predictions to prelabel tasks" (``show_collab_predictions``); turning it off also
        clears the project's ``model_version`` (Label Studio does)."""
        ...

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Import tasks (with inline predictions) in one request, never retried; ids in request order."""
        ...

    def task_page(
        self, project_id: int, query: dict[str, Any], *, include: str, fields: str, page: int, page_size: int
    ) -> list[dict[str, Any]]: ...

    def delete_tasks(self, project_id: int, task_ids: Sequence[int]) -> None:
        """Delete tasks (and their predictions) of the project; ids already gone are ignored."""
        ...

    def task(self, task_id: int) -> dict[str, Any]:
        """One task as stored (``data`` unresolved: s3:// URIs as imported, ``meta``)."""
        ...

    def update_task(self, task_id: int, *, data: dict[str, Any], meta: dict[str, Any]) -> None:
        """Replace the task's ``data`` and ``meta`` (PATCH: annotations, predictions and storage links stay)."""
        ...

    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> None: ...

    def model_versions(self, project_id: int) -> dict[str, int]:
        """Prediction tag → number of predictions."""
        ...

    def delete_model_version(self, project_id: int, tag: str, count: int = 0) -> int: ...

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]: ...

    def set_cluster(self, prediction_id: int, cluster: int) -> None: ...

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """The project's ML backends, each with ``id``, ``url`` and ``title``."""
        ...

    def add_ml_backend(
        self, project_id: int, url: str, title: str, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Connect an ML backend (the server calls its ``/health`` and ``/setup`` before answering)."""
        ...

    def delete_ml_backend(self, backend_id: int) -> None: ...

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks, each with ``id``, ``url``, ``headers``, ``actions``."""
        ...

    def add_webhook(
        self, project_id: int, url: str, headers: dict[str, str], actions: Sequence[str]
    ) -> dict[str, Any]: ...

    def update_webhook(self, webhook_id: int, url: str, headers: dict[str, str], actions: Sequence[str]) -> None: ...

    def delete_webhook(self, webhook_id: int) -> None: ...

    def download(self, path: str, max_bytes: int) -> bytes:
        """The bytes of a file the server serves at ``path`` (relative to its URL), with the API key."""
        ...


class _Refused(Exception):
    """An error status from one of our own raw calls (mapped like the SDK's ``ApiError``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _KeyAuth(httpx.Auth):
    """Label Studio's two kinds of key: a legacy token is sent as is; a personal access token (a JWT refresh
    token) is exchanged for a short-lived access token — through the SDK's public token API — and again when the
    server refuses the current one."""

    def __init__(self, key: str, exchange: Callable[[], str]) -> None:
        self._key = key
        self._jwt = key.count(".") == 2
        self._exchange = exchange
        self._access: str | None = None
        self._lock = threading.Lock()

    def _renewed(self, stale: str | None) -> str:
        with self._lock:
            if self._access is None or self._access == stale:
                self._access = self._exchange()
            return self._access

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._jwt:
            request.headers["Authorization"] = f"Token {self._key}"
            yield request
            return
        token = self._access or self._renewed(None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # expired access token: once more with a fresh one
            request.headers["Authorization"] = f"Bearer {self._renewed(token)}"
            yield request


class LabelStudioClient:
    """One Label Studio server, one API key (implements ``LabelStudioAPI``).

    ``transport`` replaces the network (an ``httpx.MockTransport`` in tests) for the SDK and the raw calls alike.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 60.0,
        max_retries: int = 2,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = (url or "").strip().rstrip("/")
        register_secret(api_key)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"invalid Label Studio URL {redact(repr(url))}: expected http(s)://host:port (label_studio.url or "
                "LABEL_STUDIO_URL)"
            )
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError(
                f"invalid Label Studio URL {redact(url)}: it must not contain a user name or password; set the key "
                "in LABEL_STUDIO_API_KEY (or label_studio.api_key)"
            )
        api_key = (api_key or "").strip()
        if not api_key:
            raise ConfigError("no Label Studio API key: set LABEL_STUDIO_API_KEY (or label_studio.api_key)")
        if not all(0x21 <= ord(ch) <= 0x7E for ch in api_key):
            raise ConfigError(
                "the Label Studio API key contains a space, a control character or a non-ASCII character: it cannot "
                "be sent in an HTTP header (copy it again from Label Studio's Account & Settings)"
            )
        self.url = url
        self.user: str | None = None  # set by whoami()
        self.timeout = timeout
        self.max_retries = max_retries
        self._secret = api_key
        self._transport = transport
        self._sdk_client: Any = None  # built on first use (``_sdk``): an idle turn makes only raw calls
        auth = _KeyAuth(api_key, lambda: str(self._sdk.tokens.refresh(refresh=api_key).access))
        self._http = httpx.Client(
            base_url=url + "/", auth=auth, timeout=timeout, follow_redirects=True, transport=transport
        )

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    @property
    def _sdk(self) -> Any:
        """The SDK's generated client, built (and imported, ~0.3 s) the first time a call needs it. Without the
        SDK's extensions: those import its labeling-interface and JSON-schema helpers (1.5-2 s per process), which
        curate never uses; every endpoint curate calls through the SDK is generated."""
        if self._sdk_client is None:
            from label_studio_sdk.base_client import LabelStudioBase as LabelStudio

            http = None if self._transport is None else httpx.Client(transport=self._transport, timeout=self.timeout)
            self._sdk_client = self._call(
                "connecting",
                lambda: LabelStudio(
                    base_url=self.url,
                    api_key=self._secret,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    httpx_client=http,
                ),
            )
        return self._sdk_client

    # -- error handling ----------------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        """Mask the key here, before an error leaves the client (the CLI masks known secrets once more)."""
        return redact(text.replace(self._secret, "***") if self._secret else text)

    def _refused(self, status: int, body: Any, what: str, import_call: bool) -> LabelStudioError:
        detail = self._redact(_detail(body))
        if status in (401, 403):
            return LabelStudioAuthError(
                f"Label Studio at {self.url} refused the API key ({status}: {detail}); "
                "check LABEL_STUDIO_API_KEY (a legacy token or a personal access token)",
                status,
            )
        message = f"Label Studio at {self.url} answered {status} while {what}: {detail}"
        if import_call and (status >= 500 or status in (408, 429)):
            return ImportOutcomeUnknown(message, status)
        return LabelStudioError(message, status)

    def _call(self, what: str, fn: Callable[[], T], *, import_call: bool = False) -> T:
        try:
            return fn()
        except _Refused as exc:
            raise self._refused(exc.status, exc.body, what, import_call) from None
        except httpx.TimeoutException:
            message = f"Label Studio at {self.url} did not answer within {self.timeout:g} s while {what}"
            raise (ImportOutcomeUnknown if import_call else LabelStudioError)(message) from None
        except httpx.ConnectError as exc:
            reason = self._redact(_reason(exc))
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} while {what}: {reason}") from None
        except httpx.HTTPError as exc:
            message = f"connection to Label Studio at {self.url} failed while {what}: {self._redact(_reason(exc))}"
            raise (ImportOutcomeUnknown if import_call else LabelStudioError)(message) from None
        except Exception as exc:
            api_error = _sdk_api_error()  # only the SDK raises it, so it is loaded whenever one is raised
            if api_error is not None and isinstance(exc, api_error):
                raise self._refused(
                    getattr(exc, "status_code", 0) or 0, getattr(exc, "body", None), what, import_call
                ) from None
            raise

    def _raw(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """An endpoint the SDK has no method for; retried like the SDK's calls unless ``retry`` is False (calls
        that create something)."""

        def send() -> Any:
            attempt = 0
            while True:
                try:
                    response = self._http.request(
                        method, path, params=params, json=json_body, timeout=timeout or self.timeout
                    )
                except (httpx.ConnectError, httpx.RemoteProtocolError):
                    if not retry or attempt >= self.max_retries:
                        raise
                else:
                    again = response.status_code >= 500 or response.status_code in _RETRY_STATUS
                    if not again or not retry or attempt >= self.max_retries:
                        break
                time.sleep(min(2.0**attempt, _MAX_BACKOFF_S))
                attempt += 1
            if response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:300]
                raise _Refused(response.status_code, body)
            return response.json() if response.content else None

        return self._call(what, send)

    # -- identity and projects ---------------------------------------------------------------------------------------
    def whoami(self) -> str:
        """The key's user (email or username); also the check that the server answers and accepts the key."""
        user = self._raw("GET", "api/current-user/whoami", what="checking the API key")
        user = user if isinstance(user, dict) else {}
        self.user = str(user.get("email") or user.get("username") or "")
        return self.user

    def project(self, project_id: int) -> dict[str, Any]:
        """The project as the API returns it (the SDK's ``projects.get`` answers the same fields)."""
        result = self._raw("GET", f"api/projects/{int(project_id)}/", what=f"reading project {project_id}")
        if not isinstance(result, dict):
            raise LabelStudioError(f"Label Studio at {self.url} answered project {project_id} with no object")
        return result

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        """One request per page of ``PROJECT_PAGE`` projects, following ``next`` only while the server says there
        is one (the SDK's pager asks for the page after the last one, which Label Studio answers — and logs — as a
        404 with a traceback on every lookup)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._raw(
                "GET",
                "api/projects/",
                what=f"looking up project {title!r}",
                params={"title": title, "page": page, "page_size": PROJECT_PAGE},
            )
            rows = body.get("results", []) if isinstance(body, dict) else list(body or [])
            found.extend({"id": int(p["id"]), "title": p.get("title")} for p in rows)
            if not (isinstance(body, dict) and body.get("next")) or not rows:
                return found
            page += 1

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        created = self._call(
            f"creating project {title!r}",
            lambda: self._sdk.projects.create(title=title, label_config=label_config, description=description),
        )
        return self.project(int(created.id or 0))

    def set_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the project's labeling config (Label Studio refuses one that drops labels already in use)."""
        self._call(
            f"updating the labeling config of project {project_id}",
            lambda: self._sdk.projects.update(id=project_id, label_config=label_config),
        )

    def local_storage_paths(self, project_id: int) -> list[str]:
        storages = self._call(
            "listing local storages", lambda: list(self._sdk.import_storage.local.list(project=project_id))
        )
        return [str(s.path) for s in storages if getattr(s, "path", None)]

    def s3_storage_buckets(self, project_id: int) -> list[tuple[str, str]]:
        storages = self._call("listing S3 storages", lambda: list(self._sdk.import_storage.s3.list(project=project_id)))
        return [(str(s.bucket), str(s.prefix or "")) for s in storages if getattr(s, "bucket", None)]

    def add_s3_storage(self, project_id: int, storage: S3StorageSpec) -> None:
        from label_studio_sdk.core.api_error import ApiError

        where = f"S3 storage s3://{storage.bucket}/{storage.prefix} ({storage.endpoint_url or 'AWS S3'})"
        try:
            self._add_s3_storage(project_id, storage)
        except LabelStudioError as exc:  # the server's answer may quote what it was sent
            cause = exc.__context__
            if isinstance(cause, ApiError) and cause.status_code in (400, 403):  # about the storage, not the key
                detail = storage.redact(self._redact(_detail(cause.body)))
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the {where} ({cause.status_code}: {detail}); a private or "
                    "loopback endpoint needs LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false on the server",
                    cause.status_code,
                ) from None
            raise LabelStudioError(storage.redact(str(exc)), exc.status) from None

    def _add_s3_storage(self, project_id: int, storage: S3StorageSpec) -> None:
        self._call(
            f"adding S3 storage s3://{storage.bucket}/{storage.prefix} ({storage.endpoint_url or 'AWS S3'})",
            lambda: self._sdk.import_storage.s3.create(
                project=project_id,
                title=f"curate pool s3://{storage.bucket}/{storage.prefix}"[:2000],
                bucket=storage.bucket,
                prefix=storage.prefix or None,
                presign=True,
                presign_ttl=storage.presign_ttl_min,
                use_blob_urls=True,
                recursive_scan=True,
                region_name=storage.region,
                s3endpoint=storage.endpoint_url,
                aws_access_key_id=storage.access_key_id,
                aws_secret_access_key=storage.secret_access_key,
                aws_session_token=storage.session_token,
            ),
        )

    def add_local_storage(self, project_id: int, path: str) -> None:
        self._call(
            f"adding local-files storage {path}",
            lambda: self._sdk.import_storage.local.create(
                project=project_id, path=path, title="curate pool", use_blob_urls=True
            ),
        )

    def set_ranking(self, project_id: int, tag: str) -> None:
        self._call(
            "switching the project to the new ranking",
            lambda: self._sdk.projects.update(id=project_id, model_version=tag, sampling=UNCERTAINTY_SAMPLING),
        )

    def set_prelabeling(self, project_id: int, on: bool) -> None:
        self._call(
            "setting the project's prelabeling",
            lambda: self._sdk.projects.update(id=project_id, show_collab_predictions=on),
        )

    # -- tasks -------------------------------------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        response = self._call(
            f"importing {len(tasks)} tasks",
            lambda: self._sdk.projects.import_tasks(
                id=project_id,
                request=list(tasks),  # plain dicts are accepted
                return_task_ids=True,
                request_options={"max_retries": 0},
            ),
            import_call=True,
        )
        ids = getattr(response, "task_ids", None) or response.dict().get("task_ids") or []
        if len(ids) != len(tasks):
            raise ImportOutcomeUnknown(
                f"Label Studio at {self.url} reported {len(ids)} task ids for {len(tasks)} imported tasks"
            )
        return [int(i) for i in ids]

    def task_page(
        self, project_id: int, query: dict[str, Any], *, include: str, fields: str, page: int, page_size: int
    ) -> list[dict[str, Any]]:
        """One page of tasks as plain JSON (the SDK's task listing parses every task into models and cannot
        restrict ``include``: the slow path for large projects)."""
        params = {
            "project": project_id,
            "page": page,
            "page_size": page_size,
            "fields": fields,
            "include": include,
            "query": json.dumps(query),
            "resolve_uri": "false",  # the data as stored (s3:// URIs, not the server's resolve links)
        }
        what = "pulling annotations" if fields == "all" else "listing tasks"
        try:
            body = self._raw("GET", "api/tasks", what=what, params=params)
        except LabelStudioError as exc:
            if exc.status == 404:  # past the last page
                return []
            raise
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        return list(tasks or [])

    def delete_tasks(self, project_id: int, task_ids: Sequence[int]) -> None:
        """The Data Manager's bulk ``delete_tasks`` action (what the UI's "Delete tasks" sends): one request for
        many tasks. Ids not in the project match nothing, so a retry after a lost answer is harmless."""
        if not task_ids:
            return
        self._raw(
            "POST",
            "api/dm/actions",
            params={"id": "delete_tasks", "project": project_id},
            json_body={"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}},
            what=f"deleting {len(task_ids)} duplicate task(s)",
        )

    def task(self, task_id: int) -> dict[str, Any]:
        body = self._raw("GET", f"api/tasks/{int(task_id)}", what="reading a task", params={"resolve_uri": "false"})
        return dict(body or {})

    def update_task(self, task_id: int, *, data: dict[str, Any], meta: dict[str, Any]) -> None:
        self._raw("PATCH", f"api/tasks/{int(task_id)}", what="marking a task", json_body={"data": data, "meta": meta})

    # -- predictions -------------------------------------------------------------------------------------------------
    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> None:
        if not predictions:
            return
        response = self._call(
            f"writing {len(predictions)} predictions",
            lambda: self._sdk.projects.import_predictions(
                id=project_id,
                request=list(predictions),  # plain dicts are accepted
            ),
        )
        created = int(response.dict().get("created", len(predictions)))
        if created != len(predictions):
            raise LabelStudioError(
                f"Label Studio at {self.url} stored {created} of {len(predictions)} predictions: a label in the "
                "predictions is not in the project's labeling config (run `curate ls init` to check)"
            )

    def model_versions(self, project_id: int) -> dict[str, int]:
        body = self._raw("GET", f"api/projects/{project_id}/model-versions/", what="listing prediction versions")
        return {str(k): int(v) for k, v in (body or {}).items()} if isinstance(body, dict) else {}

    def delete_model_version(self, project_id: int, tag: str, count: int = 0) -> int:
        """Delete every prediction tagged ``tag``. Label Studio deletes them one by one (a counter update per
        prediction, ~10 ms each on its SQLite backend), so the timeout grows with ``count``."""
        body = self._raw(
            "DELETE",
            f"api/projects/{project_id}/model-versions/",
            json_body={"model_version": tag},
            what=f"deleting {count or 'the'} superseded predictions {tag}",
            timeout=max(self.timeout, 30.0 + 0.05 * count),
        )
        return int((body or {}).get("deleted_predictions", 0)) if isinstance(body, dict) else 0

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions of one task (asked per task: listing a project's predictions costs time in proportion
        to the whole project)."""
        found = self._call("looking up a prediction", lambda: self._sdk.predictions.list(task=task_id))
        return [dict(p.dict()) for p in found]

    def set_cluster(self, prediction_id: int, cluster: int) -> None:
        self._call(
            "setting a prediction's cluster",
            lambda: self._sdk.predictions.update(id=prediction_id, cluster=int(cluster)),
        )

    # -- ML backends and webhooks (``curate ls connect``) -------------------------------------------------------------
    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        body = self._raw("GET", "api/ml", params={"project": project_id}, what="listing ML backends")
        return [dict(b) for b in body or []] if isinstance(body, list) else []

    def add_ml_backend(
        self, project_id: int, url: str, title: str, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"project": project_id, "url": url, "title": title, "is_interactive": False}
        if basic_auth is not None:
            payload.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        secret = basic_auth[1] if basic_auth else ""
        try:
            body = self._raw("POST", "api/ml", json_body=payload, what=f"connecting the ML backend {url}", retry=False)
        except LabelStudioError as exc:
            if secret and secret in str(exc):  # pragma: no cover - the server does not echo it; never let it out
                raise LabelStudioError(str(exc).replace(secret, "***"), exc.status) from None
            raise
        return dict(body or {})

    def delete_ml_backend(self, backend_id: int) -> None:
        self._raw("DELETE", f"api/ml/{backend_id}", what="removing the ML backend")

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        body = self._raw("GET", "api/webhooks", params={"project": project_id}, what="listing webhooks")
        return [dict(w) for w in body or []] if isinstance(body, list) else []

    def add_webhook(self, project_id: int, url: str, headers: dict[str, str], actions: Sequence[str]) -> dict[str, Any]:
        payload = {"project": project_id, **_webhook(url, headers, actions)}
        body = self._raw("POST", "api/webhooks", json_body=payload, what=f"adding the webhook {url}", retry=False)
        return dict(body or {})

    def update_webhook(self, webhook_id: int, url: str, headers: dict[str, str], actions: Sequence[str]) -> None:
        payload = _webhook(url, headers, actions)
        self._raw("PATCH", f"api/webhooks/{webhook_id}", json_body=payload, what=f"updating the webhook {url}")

    def delete_webhook(self, webhook_id: int) -> None:
        self._raw("DELETE", f"api/webhooks/{webhook_id}", what="removing the webhook")

    def download(self, path: str, max_bytes: int) -> bytes:
        def fetch() -> bytes:
            with self._http.stream("GET", path.lstrip("/")) as response:
                if response.status_code >= 400:
                    raise _Refused(response.status_code, response.read()[:300].decode("utf-8", "replace"))
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise LabelStudioError(f"{path} on Label Studio at {self.url} is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)

        return self._call(f"downloading {path}", fetch)


def _sdk_api_error() -> type[Exception] | None:
    """The SDK's ``ApiError`` if the SDK was imported (this process made an SDK call), else None."""
    module = sys.modules.get("label_studio_sdk.core.api_error")
    error = getattr(module, "ApiError", None)
    return error if isinstance(error, type) else None


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "validation_errors", "errors", "message"):
            if key in body:
                return str(body[key])[:300]
        return str(body)[:300]
    return str(body)[:300] if body else "no details"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _webhook(url: str, headers: dict[str, str], actions: Sequence[str]) -> dict[str, Any]:
    """A webhook that sends only ``actions``, with their payload (created and updated alike)."""
    return {
        "url": url,
        "headers": headers,
        "actions": list(actions),
        "send_payload": True,
        "send_for_all_actions": False,
        "is_active": True,
    }
