"""Label Studio adapter: every HTTP call curate makes, through the official SDK, with errors made typed and safe.

- Every failure becomes a ``LabelStudioError`` (``LabelStudioAuthError`` for a refused key) that names the server
  and what was being done; the API key never appears in a message (the SDK's own exception text includes
  response headers, so messages are built from the status code and the body's ``detail`` only).
- Task imports are sent **without retries**: the SDK retries POSTs on 5xx, and a 502 from a proxy after the
  server committed would import the same tasks twice. An import whose outcome is unknown raises
  ``ImportOutcomeUnknown``; the caller reconciles by ``curation_id`` before trying again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from curation.errors import ConfigError, LabelStudioAuthError, LabelStudioError

T = TypeVar("T")
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
LS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the only format the task filter accepts
_FILTER_CHUNK = 40  # curation ids per reconciliation query (each is one OR-ed filter in the query string)


class ImportOutcomeUnknown(LabelStudioError):
    """The import request failed in a way that may have come after the server committed (5xx, timeout,
    connection lost): the tasks may or may not exist."""


def ls_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(LS_TIME_FORMAT)


def parse_ls_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class LabelStudioClient:
    """One Label Studio server, one API key."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0, max_retries: int = 2) -> None:
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"invalid Label Studio URL {url!r}: expected http(s)://host:port (label_studio.url or LABEL_STUDIO_URL)"
            )
        if not api_key:
            raise ConfigError("no Label Studio API key: set LABEL_STUDIO_API_KEY (or label_studio.api_key)")
        self.url = url
        self.user: str | None = None  # set by whoami()
        self.timeout = timeout
        self._secret = api_key
        from label_studio_sdk import LabelStudio

        self._sdk = self._call(
            "connecting", lambda: LabelStudio(base_url=url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        )

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    # -- error handling ----------------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _call(self, what: str, fn: Callable[[], T], *, import_call: bool = False) -> T:
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as exc:
            status = exc.status_code or 0
            detail = _detail(exc.body)
            if status in (401, 403):
                raise LabelStudioAuthError(
                    f"Label Studio at {self.url} refused the API key ({status}: {self._redact(detail)}); "
                    "check LABEL_STUDIO_API_KEY (a legacy token or a personal access token)"
                ) from None
            message = f"Label Studio at {self.url} answered {status} while {what}: {self._redact(detail)}"
            if import_call and (status >= 500 or status in (408, 429)):
                raise ImportOutcomeUnknown(message, status) from None
            raise LabelStudioError(message, status) from None
        except httpx.TimeoutException:
            message = f"Label Studio at {self.url} did not answer within {self.timeout:g} s while {what}"
            raise (ImportOutcomeUnknown if import_call else LabelStudioError)(message) from None
        except httpx.ConnectError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} while {what}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            message = f"connection to Label Studio at {self.url} failed while {what}: {_reason(exc)}"
            raise (ImportOutcomeUnknown if import_call else LabelStudioError)(message) from None

    def _raw(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        retries: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """An endpoint the SDK has no method for, through the SDK's HTTP client (same auth, token refresh)."""
        http = self._sdk._client_wrapper.httpx_client  # the SDK's own authenticated transport
        options: dict[str, Any] = {}
        if not retries:
            options["max_retries"] = 0
        if timeout is not None:
            options["timeout"] = timeout

        def send() -> Any:
            response = http.request(
                path,
                method=method,
                params=params,
                json=json_body,
                request_options=options or None,  # type: ignore[arg-type]  # a RequestOptions dict
            )
            if response.status_code >= 400:
                from label_studio_sdk.core.api_error import ApiError

                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:300]
                raise ApiError(status_code=response.status_code, headers=None, body=body)
            return response.json() if response.content else None

        return self._call(what, send)

    # -- identity and projects ---------------------------------------------------------------------------------------
    def whoami(self) -> str:
        """The key's user (email or username); also the check that the server answers and accepts the key."""
        user = self._call("checking the API key", lambda: self._sdk.users.whoami())
        self.user = str(getattr(user, "email", "") or getattr(user, "username", ""))
        return self.user

    def find_project(self, name_or_id: str) -> dict[str, Any] | None:
        """A project by numeric id, or by exact title (the API's title search is a case-insensitive substring)."""
        if name_or_id.isdigit():
            try:
                return self.project(int(name_or_id))
            except LabelStudioError as exc:
                if exc.status == 404:
                    return None
                raise
        found: list[Any] = self._call(
            f"looking up project {name_or_id!r}", lambda: list(self._sdk.projects.list(title=name_or_id))
        )
        exact = [p for p in found if getattr(p, "title", None) == name_or_id]
        return self.project(int(exact[0].id)) if exact else None

    def project(self, project_id: int) -> dict[str, Any]:
        result = self._call(f"reading project {project_id}", lambda: self._sdk.projects.get(id=project_id))
        return dict(result.dict())

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        if not 3 <= len(title) <= 50:
            raise ConfigError(f"Label Studio project titles must be 3 to 50 characters, got {title!r}")
        created = self._call(
            f"creating project {title!r}",
            lambda: self._sdk.projects.create(title=title, label_config=label_config, description=description),
        )
        return self.project(int(created.id or 0))

    def ensure_local_storage(self, project_id: int, path: str) -> None:
        """Label Studio serves ``/data/local-files/`` only under a project's local storage: add one for ``path``."""
        storages = self._call(
            "listing local storages", lambda: list(self._sdk.import_storage.local.list(project=project_id))
        )
        if any(getattr(s, "path", None) == path for s in storages):
            return
        self._call(
            f"adding local-files storage {path}",
            lambda: self._sdk.import_storage.local.create(
                project=project_id, path=path, title="curate pool", use_blob_urls=True
            ),
        )

    def set_ranking(self, project_id: int, tag: str) -> None:
        """Make the label stream serve tasks by the lowest score among predictions tagged ``tag``."""
        self._call(
            "switching the project to the new ranking",
            lambda: self._sdk.projects.update(id=project_id, model_version=tag, sampling=UNCERTAINTY_SAMPLING),
        )

    # -- tasks -------------------------------------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Import tasks (with inline predictions) in one request, never retried. Returns ids in request order."""
        response = self._call(
            f"importing {len(tasks)} tasks",
            lambda: self._sdk.projects.import_tasks(
                id=project_id,
                request=list(tasks),  # type: ignore[arg-type]  # plain dicts are accepted
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

    def tasks_by_curation_id(self, project_id: int, content_ids: Sequence[str]) -> dict[str, list[int]]:
        """curation_id → task ids found in the project (more than one means duplicates made outside curate)."""
        found: dict[str, list[int]] = {}
        for start in range(0, len(content_ids), _FILTER_CHUNK):
            part = list(content_ids[start : start + _FILTER_CHUNK])
            query = {
                "filters": {
                    "conjunction": "or",
                    "items": [
                        {"filter": "filter:tasks:data.curation_id", "operator": "equal", "type": "String", "value": c}
                        for c in part
                    ],
                },
                "ordering": ["tasks:id"],
            }
            _collect_by_curation_id(
                found, self._task_pages(project_id, query, include="id,data", what="reconciling tasks")
            )
        return found

    def all_curate_tasks(self, project_id: int) -> dict[str, list[int]]:
        """Every task of the project that carries a curation_id (a full sweep: used when curate's records are
        missing, e.g. a new database pointed at an existing project)."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:data.curation_id", "operator": "not_empty", "type": "String", "value": ""}
                ],
            },
            "ordering": ["tasks:id"],
        }
        found: dict[str, list[int]] = {}
        _collect_by_curation_id(found, self._task_pages(project_id, query, include="id,data", what="listing tasks"))
        return found

    def task_ids(self, project_id: int) -> set[int]:
        """Every task id of the project (a sweep; used to find tasks deleted in Label Studio)."""
        query = {"filters": {"conjunction": "and", "items": []}, "ordering": ["tasks:id"]}
        pages = self._task_pages(project_id, query, include="id", what="listing task ids", page_size=1000)
        return {int(task["id"]) for task in pages}

    def _task_pages(
        self,
        project_id: int,
        query: dict[str, Any],
        *,
        include: str,
        what: str,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every task matching ``query``, by page number (for filters whose result does not change meanwhile)."""
        page = 1
        while True:
            tasks = self._task_page(project_id, query, include, what, page, page_size, "task_only")
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1

    def _task_page(
        self,
        project_id: int,
        query: dict[str, Any],
        include: str,
        what: str,
        page: int,
        page_size: int,
        fields: str,
    ) -> list[dict[str, Any]]:
        params = {
            "project": project_id,
            "page": page,
            "page_size": page_size,
            "fields": fields,
            "include": include,
            "query": json.dumps(query),
        }
        try:
            body = self._raw("GET", "api/tasks", what=what, params=params)
        except LabelStudioError as exc:
            if exc.status == 404:  # past the last page
                return []
            raise
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        return list(tasks or [])

    def updated_tasks(
        self, project_id: int, since: datetime | None, page_size: int = 100
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of tasks updated at or after ``since`` (oldest first), with their annotations.

        Keyset paging on ``updated_at``: each request asks for the first page of tasks updated at or after the
        newest time seen so far. Page numbers would skip tasks whenever a labeler updates a task mid-pull (it
        moves to the end and every later task shifts one page up).
        """
        include = "id,data,updated_at,annotations,id,result,was_cancelled,completed_by,lead_time,created_at"
        cursor = since
        seen: set[int] = set()  # ids already yielded whose updated_at equals the cursor
        size = page_size
        while True:
            items = []
            if cursor is not None:
                items.append(
                    {
                        "filter": "filter:tasks:updated_at",
                        "operator": "greater_or_equal",
                        "type": "Datetime",
                        "value": ls_time(cursor),
                    }
                )
            query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:updated_at"]}
            tasks = self._task_page(project_id, query, include, "pulling annotations", 1, size, "all")
            times = [parse_ls_time(t.get("updated_at")) for t in tasks]
            fresh = [t for t, at in zip(tasks, times, strict=True) if not (at == cursor and int(t["id"]) in seen)]
            if fresh:
                yield fresh
            if len(tasks) < size:
                return
            newest = max((at for at in times if at is not None), default=None)
            if newest is None:
                raise LabelStudioError(f"Label Studio at {self.url} returned tasks without updated_at")
            if newest == cursor:
                # a full page of tasks updated at the very same instant: widen the page until it moves on
                seen.update(int(t["id"]) for t in tasks)
                size *= 2
                continue
            cursor, size = newest, page_size
            seen = {int(t["id"]) for t, at in zip(tasks, times, strict=True) if at == newest}

    # -- predictions -------------------------------------------------------------------------------------------------
    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> None:
        if not predictions:
            return
        response = self._call(
            f"writing {len(predictions)} predictions",
            lambda: self._sdk.projects.import_predictions(
                id=project_id,
                request=list(predictions),  # type: ignore[arg-type]  # plain dicts are accepted
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

    def prediction_id(self, task_id: int, tag: str) -> int | None:
        """The id of task ``task_id``'s prediction tagged ``tag`` (asked per task: listing a project's predictions
        costs time in proportion to the whole project)."""
        preds = self._raw("GET", "api/predictions/", params={"task": task_id}, what="looking up a prediction")
        for pred in preds or []:
            if isinstance(pred, dict) and pred.get("model_version") == tag and pred.get("task") == task_id:
                return int(pred["id"])
        return None

    def set_cluster(self, prediction_id: int, cluster: int) -> None:
        self._raw(
            "PATCH",
            f"api/predictions/{prediction_id}",
            json_body={"cluster": int(cluster)},
            what="setting a prediction's cluster",
        )


def _collect_by_curation_id(found: dict[str, list[int]], tasks: Iterable[dict[str, Any]]) -> None:
    """Add each task's id under its ``curation_id`` (tasks without one are not curate's)."""
    for task in tasks:
        cid = (task.get("data") or {}).get("curation_id")
        if cid:
            found.setdefault(str(cid), []).append(int(task["id"]))


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


def watermark_with_margin(value: str | None, margin_s: float = 1.0) -> datetime | None:
    """Pull again from a little before the last watermark: tasks updated in the same instant are not missed,
    and re-reading a few annotations is harmless (they are upserted)."""
    parsed = parse_ls_time(value)
    return None if parsed is None else parsed - timedelta(seconds=margin_s)
