"""curate serve in milliseconds: the ASGI app under FastAPI's TestClient over a real SQLite store, with the
in-memory Label Studio and a recording turn runner; the task-image resolver; ``ls connect`` on the fake; the
metrics textfile."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from curation.config import Settings, load_settings
from curation.errors import ConfigError
from curation.jobs.connect import ls_connect
from curation.jobs.turns import TurnResult, TurnScheduler
from curation.labelstudio.backend import SECRET_HEADER, WEBHOOK_ACTIONS, connect_backend, disconnect_backend
from curation.labelstudio.formats import label_config
from curation.labelstudio.images import resolve_task_image
from curation.metrics import write_textfile
from curation.serve import check_security
from curation.serve.app import create_app
from tests.fake_labelstudio import FakeLabelStudio
from tests.test_ls_queue import CLASSES, World, make_world

SECRET = "s3cret-webhook-value"
PASSWORD = "basic-pw-value"


class Recorder:
    """A turn runner that records its calls (and can be made slow)."""

    def __init__(self, seconds: float = 0.0, outcome: str = "ok") -> None:
        self.calls = 0
        self.seconds = seconds
        self.outcome = outcome
        self.started = threading.Event()

    def __call__(self, settings: Settings) -> TurnResult:
        self.calls += 1
        self.started.set()
        time.sleep(self.seconds)
        return TurnResult(self.outcome, self.seconds, summary={"scoring": {"scored": 2}})


def settings_for(world: World, tmp_path: Path, **serve: Any) -> Settings:
    overrides: dict[str, Any] = {
        "db": str(world.store.url),
        "label_studio.project": "queue-test",
        "label_studio.url": "http://ls.test",
        "label_studio.document_root": world.cfg.document_root,
        "serve.debounce_s": 0.05,
    }
    overrides.update({f"serve.{k}": v for k, v in serve.items()})
    return load_settings(overrides=overrides, environ={})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_world(tmp_path, FakeLabelStudio())
    made.store.models.set_current(made.mv.id, note="test")
    yield made
    made.store.close()


def client_for(world: World, settings: Settings, runner: Recorder | None = None) -> tuple[TestClient, TurnScheduler]:
    turns = TurnScheduler(settings, debounce_s=settings.serve.debounce_s, runner=runner or Recorder())
    app = create_app(settings, store=world.store, scheduler=turns, ls=world.ls)
    return TestClient(app, raise_server_exceptions=False), turns


def tasks_for(world: World, indices: list[int]) -> list[dict[str, Any]]:
    return [
        {"id": 100 + k, "data": {"image": f"/data/local-files/?d=pool/img_{k:02d}.jpg", "curation_id": f"{k:032x}"}}
        for k in indices
    ]


def test_health_setup_and_predict_from_the_store_without_loading_the_model(world: World, tmp_path: Path) -> None:
    client, _ = client_for(world, settings_for(world, tmp_path))
    assert client.get("/health").json()["status"] == "UP"
    config = label_config("classify", CLASSES)
    setup = client.post("/setup", json={"project": "1.1", "schema": config, "access_token": "ls-token"})
    assert setup.status_code == 200 and setup.json() == {"model_version": "m-1"}
    answer = client.post("/predict", json={"tasks": tasks_for(world, [0, 5, 11]), "label_config": config})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 3 and all(r["model_version"] == "m-1" for r in results)
    for k, result in zip([0, 5, 11], results, strict=True):
        (region,) = result["result"]
        assert region["type"] == "choices" and region["value"]["choices"] == [CLASSES[k % 3]]
        assert 0.0 <= result["score"] <= 1.0
    assert results[0]["score"] < results[2]["score"]  # item 11 is the surest (make_world's probabilities)
    assert client.app.state.models.loaded is False  # type: ignore[attr-defined]
    stats = client.get("/metrics").text
    assert 'curate_serve_predict_tasks_total{source="store"} 3.0' in stats


def test_a_project_whose_labels_differ_is_named_at_setup(world: World, tmp_path: Path) -> None:
    client, _ = client_for(world, settings_for(world, tmp_path))
    answer = client.post("/setup", json={"schema": label_config("classify", ["circle", "square", "star"])})
    assert answer.status_code == 422
    assert "triangle" in answer.json()["error"] and "star" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"tasks": "all of them"}', 400, "'tasks' must be a list"),
        (b'{"tasks": [1, 2]}', 400, "'tasks' must be a list of task objects"),
        (b"", 400, "empty request body"),
        (b'{"tasks": [], "label_config": "<View><Image"}', 422, "not valid XML"),
    ],
)
def test_malformed_bodies_get_a_4xx_with_a_clear_message(
    world: World, tmp_path: Path, body: bytes, status: int, fragment: str
) -> None:
    client, _ = client_for(world, settings_for(world, tmp_path))
    answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"] and "Traceback" not in answer.text


def test_huge_batches_and_bodies_are_refused(world: World, tmp_path: Path) -> None:
    client, _ = client_for(world, settings_for(world, tmp_path, max_tasks=5, max_body_bytes=4096))
    answer = client.post("/predict", json={"tasks": tasks_for(world, list(range(6)))})
    assert answer.status_code == 413 and "at most 5 (serve.max_tasks)" in answer.json()["error"]
    big = b'{"tasks": [], "pad": "' + b"x" * 5000 + b'"}'
    answer = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "serve.max_body_bytes" in answer.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while the body streams in
        yield b'{"tasks": [], "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    answer = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_a_task_pointing_at_another_host_is_refused_without_fetching(world: World, tmp_path: Path) -> None:
    client, _ = client_for(world, settings_for(world, tmp_path, download_dir=str(tmp_path / "dl")))
    tasks = [
        {"id": 1, "data": {"image": "http://169.254.169.254/latest/meta-data/x.jpg"}},
        {"id": 2, "data": {"image": "//evil.test/x.jpg"}},
        {"id": 3, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},
        {"id": 4, "data": {"image": "file:///etc/passwd"}},
    ]
    answer = client.post("/predict", json={"tasks": tasks})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["result"] for r in results] == [[], [], [], []]
    assert "not on the configured Label Studio" in results[0]["error"]
    assert "leaves Label Studio's document root" in results[2]["error"]
    assert "download" not in world.ls.calls and not (tmp_path / "dl").exists()


def test_the_resolver_follows_only_configured_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "pool").mkdir(parents=True)
    kw: dict[str, Any] = {
        "ls_url": "http://ls.test:8080",
        "document_root": str(root),
        "url_prefix": "https://cdn.test/imgs",
        "pool_root": root / "pool",
    }
    local = resolve_task_image("/data/local-files/?d=pool/a%20b.jpg", **kw)
    assert local.kind == "local" and local.path == (root / "pool" / "a b.jpg").resolve()
    on_server = resolve_task_image("http://ls.test:8080/data/local-files/?d=pool/a.jpg", **kw)
    assert on_server.kind == "local"
    assert resolve_task_image("https://cdn.test/imgs/x/y.jpg", **kw).path == (root / "pool" / "x/y.jpg").resolve()
    upload = resolve_task_image("/data/upload/3/abc.png", **kw)
    assert upload.kind == "label_studio" and upload.url == "/data/upload/3/abc.png"
    for bad in (
        "https://cdn.test/imgs/../../secret.jpg",
        "http://ls.test:9999/data/upload/x.jpg",
        "s3://bucket/x.jpg",
        "data:image/png;base64,AAAA",
        "/data/upload/../../admin",
        "relative/path.jpg",
        None,
        42,
    ):
        assert resolve_task_image(bad, **kw).kind == "refused", bad


def test_uploads_are_fetched_from_label_studio_scored_and_stored(world: World, tmp_path: Path) -> None:
    """A task Label Studio holds itself: downloaded with its key into serve.download_dir (by content), registered
    in that folder's pool and handed to the model (the real scoring runs in tests/test_serve_labelstudio.py)."""
    world.ls.files["/data/upload/1/new.jpg"] = b"not an image"
    settings = settings_for(world, tmp_path, download_dir=str(tmp_path / "dl"))
    client, _ = client_for(world, settings)
    tasks = [{"id": 7, "data": {"image": "/data/upload/1/new.jpg"}}]
    answer = client.post("/predict", json={"tasks": tasks})
    assert world.ls.calls.count("download") == 1
    files = list((tmp_path / "dl").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == b"not an image"
    # the image is registered in the download folder's pool and handed to the model, whose file this fake
    # registry does not have: one clear 503 naming it, no traceback
    assert world.store.pools.find(str((tmp_path / "dl").resolve())) is not None
    assert answer.status_code == 503 and "m.pt" in answer.json()["error"], answer.text


def test_basic_auth_guards_everything_but_health(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path, username="ls", password=PASSWORD)
    client, _ = client_for(world, settings)
    assert client.get("/health").status_code == 200
    for method, path in (("POST", "/setup"), ("POST", "/predict"), ("GET", "/metrics"), ("POST", "/webhook")):
        answer = client.request(method, path, content=b"{}")
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Basic")
    good = "Basic " + base64.b64encode(f"ls:{PASSWORD}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"ls:nope").decode()
    assert client.post("/setup", json={}, headers={"Authorization": wrong}).status_code == 401
    assert client.post("/setup", json={}, headers={"Authorization": good}).json() == {"model_version": "m-1"}
    metrics = client.get("/metrics", headers={"Authorization": good}).text
    assert PASSWORD not in metrics


def test_webhooks_need_the_secret_and_a_burst_makes_one_turn(world: World, tmp_path: Path) -> None:
    runner = Recorder()
    # a debounce long enough that a loaded machine still sends the three webhooks within it
    client, turns = client_for(world, settings_for(world, tmp_path, webhook_secret=SECRET, debounce_s=1.5), runner)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "title": "queue-test"}}
    assert client.post("/webhook", json=event).status_code == 403
    assert client.post("/webhook", json=event, headers={SECRET_HEADER: "wrong"}).status_code == 403
    for _ in range(3):
        answer = client.post("/webhook", json=event, headers={SECRET_HEADER: SECRET})
        assert answer.status_code == 200 and answer.json()["scheduled"] is True
    other = client.post("/webhook", json={**event, "project": {"id": 9, "title": "x"}}, headers={SECRET_HEADER: SECRET})
    assert other.json() == {"scheduled": False, "reason": "another project"}
    ignored = client.post("/webhook", json={"action": "PROJECT_UPDATED"}, headers={SECRET_HEADER: SECRET})
    assert ignored.json()["scheduled"] is False
    assert turns.wait_idle(10)
    assert runner.calls == 1
    metrics = client.get("/metrics").text
    assert 'curate_serve_turns_total{outcome="ok"} 1.0' in metrics
    assert SECRET not in metrics
    assert client.post("/train", json={}, headers={SECRET_HEADER: SECRET}).json()["scheduled"] is True
    assert turns.wait_idle(10) and runner.calls == 2
    turns.stop()


def test_health_and_webhooks_answer_fast_while_a_turn_runs(world: World, tmp_path: Path) -> None:
    runner = Recorder(seconds=1.5)
    client, turns = client_for(world, settings_for(world, tmp_path), runner)
    client.post("/webhook", json={"action": "ANNOTATION_UPDATED"})
    assert runner.started.wait(5)
    for _ in range(5):
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        answer = client.post("/webhook", json={"action": "ANNOTATION_UPDATED"})
        assert answer.json()["running"] is True
        assert time.perf_counter() - started < 0.05
    assert turns.wait_idle(10)
    assert runner.calls == 2  # the webhooks during the turn make one more turn after it
    turns.stop()


def test_a_held_lock_retries_later_instead_of_running_two_turns(world: World, tmp_path: Path) -> None:
    runner = Recorder(outcome="locked")
    client, turns = client_for(world, settings_for(world, tmp_path), runner)
    client.post("/webhook", json={"action": "ANNOTATION_CREATED"})
    deadline = time.monotonic() + 10
    while (runner.calls < 1 or turns.snapshot().running) and time.monotonic() < deadline:
        time.sleep(0.02)  # until the locked turn has been handed back to the scheduler, not just called
    state = turns.snapshot()
    assert runner.calls == 1 and not state.running and state.pending
    assert state.due_in_s is not None and state.due_in_s > 5
    turns.stop()


def test_non_loopback_binding_requires_auth_and_a_webhook_secret(world: World, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serve.username, serve.password, serve.webhook_secret"):
        check_security(settings_for(world, tmp_path, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="go together"):
        check_security(settings_for(world, tmp_path, username="x"))
    check_security(settings_for(world, tmp_path, host="::1"))
    check_security(settings_for(world, tmp_path, host="0.0.0.0", username="u", password="p", webhook_secret="s"))


def test_ls_connect_is_idempotent_and_remove_undoes_it(world: World) -> None:
    ls = world.ls
    project = world.project()
    pid = project.record.project_id
    first = connect_backend(ls, pid, "http://curate:9090/", basic_auth=None, secret=SECRET)
    assert first["backend_created"] and not first["webhook_created"] and first["webhook_updated"]
    (hook,) = ls.webhooks(pid)
    assert hook["headers"] == {SECRET_HEADER: SECRET} and sorted(hook["actions"]) == sorted(WEBHOOK_ACTIONS)
    assert not hook["send_for_all_actions"]
    again = connect_backend(ls, pid, "http://curate:9090", basic_auth=None, secret=SECRET)
    assert not again["backend_created"] and not again["webhook_created"] and not again["webhook_updated"]
    assert len(ls.ml_backends(pid)) == 1 and len(ls.webhooks(pid)) == 1
    assert SECRET not in str(first) and SECRET not in str(again)
    removed = disconnect_backend(ls, pid, "http://curate:9090")
    assert removed == {"backends_removed": 1, "webhooks_removed": 1}
    assert ls.ml_backends(pid) == [] and ls.webhooks(pid) == []


def test_ls_connect_needs_a_url(world: World, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--url"):
        ls_connect(settings_for(world, tmp_path), url="curate:9090")


def test_the_textfile_keeps_other_commands_and_counts_on(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "curate.prom"
    state = {"items": 12, "queued": 4, "labeled": 3, "labels_since_training": 3, "model_version": "m-1"}
    scoring = {"scored": 10, "failed": 2, "invalid": 0, "retry_later": 0, "images_per_s": 55.5}
    write_textfile(path, "score", seconds=3.0, ok=True, scoring=scoring, state=state, now=1000.0)
    write_textfile(path, "loop", seconds=1.0, ok=False, error_kind="label_studio", scoring=None, state=state)
    write_textfile(path, "score", seconds=2.0, ok=True, scoring=scoring, state=state, now=2000.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
    assert samples[("curate_run_duration_seconds", (("command", "score"),))] == 2.0
    assert samples[("curate_run_duration_seconds", (("command", "loop"),))] == 1.0
    assert samples[("curate_last_success_timestamp_seconds", (("command", "score"),))] == 2000.0
    assert ("curate_last_success_timestamp_seconds", (("command", "loop"),)) not in samples
    assert samples[("curate_items_scored_total", (("outcome", "scored"),))] == 20.0
    assert samples[("curate_errors_total", (("kind", "label_studio"),))] == 1.0
    assert samples[("curate_queue_length", ())] == 4.0
    assert samples[("curate_scoring_images_per_second", ())] == 55.5
    assert [p.name for p in path.parent.iterdir()] == ["curate.prom"]  # no temporary file left behind


def test_the_grafana_dashboard_queries_only_metrics_curate_exposes(tmp_path: Path) -> None:
    import json
    import re

    import yaml

    from curation.metrics import ServerMetrics, run_registry

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    state = {"items": 1, "scored": 1, "unscored": 0, "queued": 1, "labeled": 1, "labels_since_training": 1}
    state |= {"model_version": "m", "metric_name": "accuracy", "metric_value": 0.9}
    server = ServerMetrics(lambda: state)
    for counter in (server.requests, server.predict_tasks, server.items_scored, server.turns, server.errors):
        counter.labels("x", *(["200"] if counter is server.requests else [])).inc()
    server.duration.labels(command="loop").set(1)
    server.last_success.labels(command="loop").set(1)
    from prometheus_client import generate_latest

    text = (
        server.render().decode()
        + generate_latest(
            run_registry("score", seconds=1, ok=True, scoring={"scored": 1, "images_per_s": 2.0}, state=state)
        ).decode()
    )
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "curate.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcurate_[a-z_]+", target["expr"])
    }
    assert len(queried) >= 12 and queried <= exposed, queried - exposed
    prometheus = yaml.safe_load((deploy / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["curate-serve:9090"] and "password_file" in job["basic_auth"]
    compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
    serve = compose["services"]["curate-serve"]
    assert serve["profiles"] == ["serve"] and "--host" in serve["command"]
    assert {"CURATE_SERVE__PASSWORD", "CURATE_SERVE__WEBHOOK_SECRET"} <= set(serve["environment"])
    assert compose["services"]["prometheus"]["profiles"] == compose["services"]["grafana"]["profiles"] == ["monitoring"]


def test_a_predict_that_needs_the_model_waits_for_no_held_lock(world: World, tmp_path: Path) -> None:
    """Another run holds the run lock: answers from the store still come; new images get 503 + Retry-After."""
    from store.lock import RunLock

    (world.pool / "brand-new.jpg").write_bytes(b"new bytes, never scanned")
    client, _ = client_for(world, settings_for(world, tmp_path))
    new_task = {"id": 50, "data": {"image": "/data/local-files/?d=pool/brand-new.jpg"}}
    with RunLock(world.store, command="curate loop (cron)"):
        stored = client.post("/predict", json={"tasks": tasks_for(world, [1])})
        assert stored.status_code == 200 and stored.json()["results"][0]["result"]
        held = client.post("/predict", json={"tasks": [new_task]})
    assert held.status_code == 503 and held.headers["retry-after"] == "30"
    assert "another curate run holds the lock" in held.json()["error"] and "curate loop (cron)" in held.json()["error"]


def test_serve_on_a_public_address_without_auth_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path / 'c.db'}"])
    assert result.exit_code == 2
    assert "serve.username, serve.password, serve.webhook_secret" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_score_writes_its_metrics_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from curation.devtools.synthetic import make_pool

    pool = tmp_path / "pool"
    make_pool(pool, n=6, size=48, seed=2)
    (pool / "broken.jpg").write_bytes(b"not an image")
    metrics = tmp_path / "textfile" / "curate.prom"
    args = ["score", "--pool", str(pool), "--model", "yolov8n-cls.yaml", "--db", f"sqlite:///{tmp_path / 'c.db'}"]
    result = CliRunner().invoke(app, [*args, "--metrics-file", str(metrics)])
    assert result.exit_code == 0, result.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[("curate_items_scored_total", (("outcome", "scored"),))] == 6
    assert samples[("curate_items_scored_total", (("outcome", "failed"),))] == 1
    assert samples[("curate_pool_items", ())] == 7 and samples[("curate_scored_items", ())] == 6
    assert ("curate_last_success_timestamp_seconds", (("command", "score"),)) in samples
    assert samples[("curate_scoring_images_per_second", ())] > 0
    # a failing run still writes: its error kind is counted, its success time is kept
    bad = CliRunner().invoke(app, [*args[:2], str(tmp_path / "missing"), *args[3:], "--metrics-file", str(metrics)])
    assert bad.exit_code == 3
    text = metrics.read_text()
    assert 'curate_errors_total{kind="not_found"} 1.0' in text
    assert 'curate_last_success_timestamp_seconds{command="score"}' in text


@pytest.mark.heavy
def test_a_turn_that_fails_in_its_process_is_reported_and_the_scheduler_goes_on(tmp_path: Path) -> None:
    """The real child process: a database it cannot open fails the turn with its kind; the server is untouched."""
    from curation.jobs.turns import run_turn

    settings = load_settings(overrides={"db": f"sqlite:///{tmp_path / 'missing' / 'dir' / 'c.db'}"}, environ={})
    result = run_turn(settings)
    assert result.outcome == "failed" and result.error_kind == "database", result
    assert result.error and "Traceback" not in result.error
