"""A real Label Studio calling a real ``curate serve``: the backend registered through Label Studio's API (``curate
ls connect``), the Data Manager's "Retrieve predictions" answered from the store and by scoring new images, an
annotation made through the API pulled by the turn its webhook scheduled, ``/metrics`` parsed with
prometheus-client's parser, and the fault cases (wrong secret, another host, huge batch)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cli import app
from curation.devtools.local_serve import start_local_serve
from curation.devtools.synthetic import classification_image
from curation.labelstudio.backend import SECRET_HEADER
from curation.scoring.pool import content_id
from tests.ls_support import LSApi

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SECRET = "webhook-secret-for-the-test"


def curate_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def serve_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment ``curate serve`` starts with; parametrized indirectly with a failpoint name, its turns stop
    there (``curation.faults``: ``<tmp>/release.waiting`` appears while one waits)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CURATE_FAILPOINT", None)
    env.pop("CURATE_PAUSEPOINT", None)
    point = getattr(request, "param", None)
    if point:
        env["CURATE_PAUSEPOINT"] = f"{point}:{tmp_path / 'release'}"
    return env


@pytest.fixture
def served(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    label_studio: Any,
    serve_env: dict[str, str],
) -> Iterator[dict[str, Any]]:
    project = f"serve-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(
        f"pool:\n  path: {ls_pool}\nlabel_studio:\n  project: {project}\n"
        "train:\n  min_new_labels: 1000\n"
        f"serve:\n  webhook_secret: {SECRET}\n  debounce_s: 0.5\n  max_tasks: 50\n"
        f"metrics:\n  textfile: {tmp_path / 'curate.prom'}\n"
    )
    db = f"sqlite:///{tmp_path / 'curate.db'}"
    common = ["--config", str(cfg), "--db", db]
    curate_json("select", "--model", str(tiny_cls_model), "--budget", "6", *common)
    log = tmp_path / "serve.log"
    server = start_local_serve(common, env=serve_env, cwd=tmp_path, log=log)
    url = server.url
    api = LSApi(label_studio.url, label_studio.api_key)
    info: dict[str, Any] = {
        "url": url,
        "common": common,
        "project": project,
        "api": api,
        "project_id": api.project_by_title(project)["id"],
        "pool": ls_pool,
        "log": log,
        "server": server,
        "tmp_path": tmp_path,
        "textfile": tmp_path / "curate.prom",
        "api_key": label_studio.api_key,
    }
    try:
        yield info
    finally:
        info["server"].stop()  # the one running now: a test may have restarted it


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_label_studio_retrieves_predictions_and_webhooks_drive_the_loop(served: dict[str, Any]) -> None:
    s = served
    api: LSApi = s["api"]
    pid = s["project_id"]
    # three tasks curate did not push: a pool image it scored but never selected, a new image it never saw, and
    # one on another host
    pushed = {t["data"]["curation_id"] for t in api.tasks(pid)}
    assert len(pushed) == 6
    root = Path(os.environ["CURATE_LABEL_STUDIO__DOCUMENT_ROOT"]).resolve()
    known = next(p for p in sorted(s["pool"].iterdir()) if content_id(p) not in pushed)
    new = s["pool"] / "never-scanned.jpg"
    classification_image(np.random.default_rng(5), "square", 64).save(new)
    api.post(
        f"/api/projects/{pid}/import",
        [
            {"image": f"/data/local-files/?d={known.resolve().relative_to(root).as_posix()}"},
            {"image": f"/data/local-files/?d={new.resolve().relative_to(root).as_posix()}"},
            {"image": "http://127.0.0.1:9/elsewhere.jpg"},
        ],
    )

    connected = curate_json("ls", "connect", "--url", s["url"], *s["common"])
    assert connected["backend_created"] and connected["webhook_secret"]
    again = curate_json("ls", "connect", "--url", s["url"], *s["common"])
    assert not again["backend_created"] and not again["webhook_created"] and not again["webhook_updated"]
    assert len(api.get("/api/ml", project=pid)) == 1
    hooks = [h for h in api.get("/api/webhooks", project=pid) if h["url"] == f"{s['url']}/webhook"]
    assert len(hooks) == 1 and hooks[0]["headers"] == {SECRET_HEADER: SECRET}

    version = curate_json("models", "current", *s["common"])["version"]
    answer = api.client.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": pid},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert answer.status_code == 200, answer.text
    ours = [p for p in api.predictions(pid) if p["model_version"] == version]
    by_task = {p["task"]: p for p in ours}
    tasks = api.tasks(pid)
    assert len(by_task) == len(tasks) == 9
    for task in tasks:
        prediction = by_task[task["id"]]
        if "elsewhere" in task["data"]["image"]:
            assert prediction["result"] == []
            continue
        (region,) = prediction["result"]
        assert region["type"] == "choices" and region["from_name"] == "label"
        assert 0.0 <= prediction["score"] <= 1.0
    stats = httpx.get(f"{s['url']}/metrics", timeout=5, trust_env=False).text
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(stats)
        for x in family.samples
    }
    assert samples[("curate_serve_predict_tasks_total", (("source", "store"),))] == 7
    assert samples[("curate_serve_predict_tasks_total", (("source", "scored"),))] == 1
    assert samples[("curate_serve_predict_tasks_total", (("source", "refused"),))] == 1

    # an annotation made through the API: its webhook schedules a turn, which pulls it
    task = next(t for t in tasks if t["data"].get("curation_id"))
    api.annotate(
        task["id"], [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["circle"]}}]
    )
    wait_for(
        lambda: curate_json("status", *s["common"])["counts"].get("labeled") == 1,
        120,
        "the webhook's turn to pull the annotation",
    )
    stats = wait_for(
        lambda: (
            text
            if 'curate_serve_turns_total{outcome="ok"}' in (text := httpx.get(f"{s['url']}/metrics", timeout=5).text)
            else None
        ),
        60,
        "the turn to finish",
    )
    families = {f.name: f for f in text_string_to_metric_families(stats)}
    assert families["curate_labeled_items"].samples[0].value == 1
    assert s["api_key"] not in stats and SECRET not in stats
    textfile = s["textfile"].read_text()
    assert 'curate_last_success_timestamp_seconds{command="loop"}' in textfile

    # faults: a wrong secret, a huge batch, a task on another host; the server's log never holds a secret
    wrong = httpx.post(f"{s['url']}/webhook", json={"action": "ANNOTATION_CREATED"}, headers={SECRET_HEADER: "x"})
    assert wrong.status_code == 403 and "X-Curate-Secret" in wrong.json()["error"]
    huge = httpx.post(f"{s['url']}/predict", json={"tasks": [{"id": i, "data": {}} for i in range(51)]})
    assert huge.status_code == 413 and "serve.max_tasks" in huge.json()["error"]
    bad = httpx.post(f"{s['url']}/predict", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "Traceback" not in bad.text
    log = s["log"].read_text()
    assert s["api_key"] not in log and SECRET not in log and "Traceback" not in log

    removed = curate_json("ls", "connect", "--remove", "--url", s["url"], *s["common"])
    assert removed["backends_removed"] == 1 and removed["webhooks_removed"] == 1
    assert api.get("/api/ml", project=pid) == []


def choose(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.mark.parametrize("serve_env", ["loop-before-rescore"], indirect=True)
def test_a_server_killed_mid_turn_loses_no_label(served: dict[str, Any], serve_env: dict[str, str]) -> None:
    """``curate serve`` killed (SIGKILL to its process group, as an OOM kill or a container restart does) while a
    webhook's turn holds the run lock, after that turn pulled: restarted, the next webhook's turn — and cron —
    complete the work; no label is lost (also not the one whose webhook came while the server was down), no task
    is duplicated, and the lock is free."""
    s = served
    api: LSApi = s["api"]
    pid = s["project_id"]
    curate_json("ls", "connect", "--url", s["url"], *s["common"])
    tasks = sorted(api.tasks(pid), key=lambda t: int(t["id"]))
    assert len(tasks) == 6

    api.annotate(tasks[0]["id"], choose("circle"))  # its webhook starts a turn, which stops after its pull
    waiting = s["tmp_path"] / "release.waiting"
    wait_for(waiting.exists, 120, "the webhook's turn to reach its pause point")
    first = s["server"]
    assert httpx.get(f"{s['url']}/status", timeout=5).json()["turns"]["running"]
    first.kill()
    wait_for(lambda: not first.group_alive(), 10, "the turn to die with its server")

    api.annotate(tasks[1]["id"], choose("square"))  # while the server is down: this webhook is lost
    env = {k: v for k, v in serve_env.items() if k != "CURATE_PAUSEPOINT"}
    s["server"] = start_local_serve(s["common"], env=env, cwd=s["tmp_path"], log=s["log"], port=first.port)

    api.annotate(tasks[2]["id"], choose("triangle"))  # the next webhook: its turn completes the work

    def finished() -> dict[str, Any] | None:
        turns = httpx.get(f"{s['url']}/status", timeout=5).json()["turns"]
        return turns if turns["turns"] >= 1 and not turns["running"] and not turns["pending"] else None

    turns = wait_for(finished, 180, "the restarted server's turn")
    assert turns["last"]["outcome"] == "ok", turns
    assert curate_json("status", *s["common"])["counts"]["labeled"] == 3  # none lost
    after = api.tasks(pid)
    assert len(after) == 6 and len({t["data"]["curation_id"] for t in after}) == 6  # no duplicate task
    assert {t["id"] for t in after if t.get("annotations")} == {t["id"] for t in tasks[:3]}
    cron = runner.invoke(app, ["loop", *s["common"], "--json"])  # the lock is free: cron's turn runs
    assert cron.exit_code == 0, cron.stderr
    assert json.loads(cron.stdout)["pulled"]["new_annotations"] == 0  # the webhook turns pulled everything
    project = api.get(f"/api/projects/{pid}")
    live = [p for p in api.predictions(pid) if p["model_version"] == project["model_version"]]
    assert {p["task"] for p in live}.isdisjoint(t["id"] for t in tasks[:3])  # labeled tasks left the queue
