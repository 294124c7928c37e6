"""The real ``LabelStudioClient`` over ``httpx.MockTransport``: typed errors, redaction, retries, the unretried
import, and both kinds of key — the HTTP layer without a server."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from curation.errors import LabelStudioAuthError, LabelStudioError
from curation.labelstudio.client import ImportOutcomeUnknown, LabelStudioAPI, LabelStudioClient
from tests.fake_labelstudio import FakeLabelStudio

KEY = "a-test-signing-key-of-32-bytes!!"
SECRET = "0123456789abcdef0123456789abcdef01234567"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("curation.labelstudio.client.time.sleep", slept.append)
    return slept


def _client(handler: Handler, key: str = SECRET, **kw: object) -> tuple[LabelStudioClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = LabelStudioClient("http://ls.test/", key, transport=httpx.MockTransport(record), **kw)  # type: ignore[arg-type]
    return client, seen


def test_both_the_client_and_the_fake_implement_the_protocol() -> None:
    implementations: list[LabelStudioAPI] = [_client(lambda r: httpx.Response(200))[0], FakeLabelStudio()]
    names = {n for n in vars(LabelStudioAPI) if not n.startswith("_")}
    for impl in implementations:
        assert all(callable(getattr(impl, n)) for n in names)


def test_a_refused_key_is_an_auth_error_that_never_shows_the_key() -> None:
    client, _ = _client(lambda r: httpx.Response(401, json={"detail": f"Invalid token {SECRET}"}))
    with pytest.raises(LabelStudioAuthError) as err:
        client.whoami()
    assert "refused the API key" in str(err.value) and SECRET not in str(err.value) and "***" in str(err.value)
    assert err.value.status == 401
    with pytest.raises(LabelStudioAuthError) as err:
        client.model_versions(1)  # our own raw calls map errors the same way
    assert SECRET not in str(err.value)
    assert SECRET not in repr(client)


def test_raw_calls_send_the_legacy_token_and_the_restricted_task_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "2":
            return httpx.Response(404, json={"detail": "Invalid page."})
        return httpx.Response(200, json={"tasks": [{"id": 1}, {"id": 2}]})

    client, seen = _client(handler)
    query = {"filters": {"conjunction": "and", "items": []}, "ordering": ["tasks:id"]}
    assert client.task_page(5, query, include="id", fields="task_only", page=1, page_size=2) == [{"id": 1}, {"id": 2}]
    assert client.task_page(5, query, include="id", fields="task_only", page=2, page_size=2) == []  # past the end
    request = seen[0]
    assert request.headers["Authorization"] == f"Token {SECRET}"
    assert request.url.path == "/api/tasks" and request.url.params["include"] == "id"
    assert json.loads(request.url.params["query"]) == query and request.url.params["project"] == "5"


def test_idempotent_raw_calls_are_retried_like_the_sdk_and_then_fail_typed(_no_backoff: list[float]) -> None:
    answers = iter([httpx.Response(502), httpx.Response(503), httpx.Response(200, json={"curate-a": 3})])
    client, seen = _client(lambda r: next(answers))
    assert client.model_versions(1) == {"curate-a": 3}
    assert len(seen) == 3 and _no_backoff == [1.0, 2.0]

    client, seen = _client(lambda r: httpx.Response(500, text="<h1>oops</h1>"), max_retries=1)
    with pytest.raises(LabelStudioError) as err:
        client.delete_model_version(1, "curate-a", 10)
    assert err.value.status == 500 and "deleting 10 superseded predictions" in str(err.value) and len(seen) == 2


def test_a_task_import_is_never_retried_and_a_502_means_the_outcome_is_unknown() -> None:
    client, seen = _client(lambda r: httpx.Response(502, text="bad gateway"))
    with pytest.raises(ImportOutcomeUnknown):
        client.import_tasks(1, [{"data": {"image": "x"}}])
    assert [r.url.path for r in seen] == ["/api/projects/1/import"]
    client, _ = _client(lambda r: httpx.Response(400, json={"detail": "bad data"}))
    with pytest.raises(LabelStudioError) as err:
        client.import_tasks(1, [{"data": {}}])
    assert not isinstance(err.value, ImportOutcomeUnknown) and err.value.status == 400


def test_an_unreachable_server_is_one_clear_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client, _ = _client(refuse, max_retries=0)
    with pytest.raises(LabelStudioError, match=r"cannot reach Label Studio at http://ls\.test while listing"):
        client.model_versions(1)


def test_a_personal_access_token_is_exchanged_and_renewed_when_refused() -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    refresh = jwt.encode({"exp": soon, "token_type": "refresh"}, KEY, algorithm="HS256")
    issued: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            assert json.loads(request.content) == {"refresh": refresh}
            issued.append(jwt.encode({"exp": soon, "n": len(issued), "token_type": "access"}, KEY, algorithm="HS256"))
            return httpx.Response(200, json={"access": issued[-1]})
        auth = request.headers.get("Authorization", "")
        if request.url.path.endswith("/model-versions/") and auth != f"Bearer {issued[-1]}":
            return httpx.Response(401, json={"detail": "token expired"})
        return httpx.Response(200, json={})

    client, _ = _client(handler, key=refresh)
    assert client.model_versions(1) == {}
    before = len(issued)
    issued.append("rotated")  # the server no longer accepts our access token: refused once, then renewed
    assert client.model_versions(1) == {}
    assert len(issued) == before + 2


def test_a_project_lookup_by_title_never_asks_for_a_page_past_the_last() -> None:
    """The SDK's pager asked for ``/api/projects/?page=2`` after a one-page answer: a 404 with a traceback in
    Label Studio's log on every lookup by title."""

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        if page > 2:
            return httpx.Response(404, json={"detail": "Invalid page."})
        rows = [{"id": page, "title": f"Defects {page}"}]
        return httpx.Response(200, json={"count": 2, "next": "…" if page == 1 else None, "results": rows})

    client, seen = _client(handler)
    assert client.projects_titled("Defects") == [{"id": 1, "title": "Defects 1"}, {"id": 2, "title": "Defects 2"}]
    assert [r.url.params["page"] for r in seen] == ["1", "2"]
    assert all(r.url.params["title"] == "Defects" for r in seen)
