"""``--pool ls://<project>`` against a real Label Studio: a project whose tasks curate did not create (imported by
the plain API — local-files URLs and uploaded files — or synced from a SeaweedFS S3 import storage) is scanned,
scored and ranked in place: predictions under a fresh model_version, no new task, annotated tasks never queued,
a task on a foreign host reported and never fetched; ``pull``, ``reprioritize`` and ``loop`` keep working."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import SHAPES, make_pool
from curation.labelstudio.formats import label_config
from tests.ls_support import LSApi, fresh_annotator

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
runner = CliRunner()


def curate_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def api(label_studio: Any) -> LSApi:
    return LSApi(label_studio.url, label_studio.api_key)


@pytest.fixture
def foreign_host() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request: a task pointing here must never be fetched."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _project(api: LSApi) -> tuple[str, int]:
    title = f"ext-{uuid.uuid4().hex[:8]}"
    project = api.post("/api/projects", {"title": title, "label_config": label_config("classify", sorted(SHAPES))})
    return title, int(project["id"])


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_an_existing_project_with_local_files_and_uploads_is_ranked_in_place(
    label_studio: Any,
    ls_root: Path,
    api: LSApi,
    tiny_cls_model: Path,
    tmp_path: Path,
    foreign_host: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = ls_root / f"ext-{uuid.uuid4().hex[:8]}"
    files = make_pool(folder, n=8, size=64, seed=31)
    uploads = make_pool(tmp_path / "uploads", n=3, size=64, seed=32)
    title, pid = _project(api)
    api.post("/api/storages/localfiles", {"project": pid, "path": str(folder), "use_blob_urls": True, "title": "x"})
    rel = folder.relative_to(ls_root).as_posix()
    tasks = [{"image": f"/data/local-files/?d={rel}/{p.name}"} for p in files]
    base, seen = foreign_host
    tasks.append({"image": f"{base}/secret.jpg"})
    api.post(f"/api/projects/{pid}/import", tasks)
    for path in uploads:  # uploaded files: the server stores them and the task references /data/upload/...
        response = api.client.post(
            f"/api/projects/{pid}/import", files={"file": (path.name, io.BytesIO(path.read_bytes()), "image/jpeg")}
        )
        response.raise_for_status()
    before = api.tasks(pid)
    assert len(before) == 12
    assert any(t["data"]["image"].startswith("/data/upload/") for t in before)
    annotated = before[0]["id"]
    api.annotate(annotated, _choice("circle"))

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    out = curate_json("select", "--pool", f"ls://{title}", "--model", str(tiny_cls_model), "--budget", "3", "--db", db)

    after = api.tasks(pid)
    assert sorted(t["id"] for t in after) == sorted(t["id"] for t in before)  # no task created, none deleted
    assert seen == []  # the foreign host was never contacted
    skipped = {s["path"]: s["reason"] for s in out["scoring"]["skipped_files"]}
    foreign = next(t["id"] for t in before if t["data"]["image"].startswith(base))
    assert "pool.http.allowed_hosts" in skipped[f"task {foreign}"]
    assert out["scoring"]["tasks"]["linked"] == 11 and out["scoring"]["tasks"]["already_labeled"] == 1
    assert out["scoring"]["scored"] == 11 and out["scoring"]["failed"] == 0

    project = api.get(f"/api/projects/{pid}")
    tag = out["ranking"]["model_version_tag"]
    assert project["model_version"] == tag and project["sampling"] == "Uncertainty sampling"
    ranked = {p["task"] for p in api.predictions(pid) if p["model_version"] == tag}
    queued = {t["id"] for t in before} - {annotated, foreign}
    assert ranked == queued  # every unlabeled task got a prediction; the annotated one is never queued
    assert annotated not in {row["task_id"] for row in out["items"]}
    assert out["items"][0]["task_id"] == fresh_annotator(label_studio.url).get(f"/api/projects/{pid}/next")["id"]

    # someone labels the head of the queue: pull brings it in; reprioritize and loop rank the rest, no new task
    head = out["items"][0]["task_id"]
    api.annotate(head, _choice("square"))
    pulled = curate_json("pull", "--project", title, "--db", db)
    assert pulled["labeled_tasks"] == 1 and pulled["foreign_tasks"] == 1  # only the never-fetched task is foreign
    # both labels are training data: their images come through Label Studio into the dataset, bytes verified
    exported = curate_json("export", "--out", str(tmp_path / "dataset"), "--db", db)
    assert exported["n_train"] + exported["n_val"] == 2 and not exported["skipped_labels"], exported
    again = curate_json("reprioritize", "--pool", f"ls://{title}", "--model", str(tiny_cls_model), "--db", db)
    assert again["changed"] and again["queue_size"] == 9
    ranked = {p["task"] for p in api.predictions(pid) if p["model_version"] == again["model_version_tag"]}
    assert ranked == queued - {head}
    turn = runner.invoke(app, ["loop", "--pool", f"ls://{title}", "--min-new-labels", "1000", "--db", db, "--json"])
    assert turn.exit_code == 0, turn.output
    assert len(api.tasks(pid)) == 12

    # a task deleted in Label Studio leaves the queue on the next scan; a new one is scanned and ranked
    victim = next(iter(queued - {head}))
    api.client.delete(f"/api/tasks/{victim}").raise_for_status()
    extra = make_pool(folder / "more", n=1, size=64, seed=33)[0]
    api.post(f"/api/projects/{pid}/import", [{"image": f"/data/local-files/?d={rel}/more/{extra.name}"}])
    third = curate_json("reprioritize", "--pool", f"ls://{title}", "--model", str(tiny_cls_model), "--db", db)
    assert third["queue_size"] == 9
    ranked = {p["task"] for p in api.predictions(pid) if p["model_version"] == third["model_version_tag"]}
    assert victim not in ranked and len(ranked) == 9


def test_a_project_synced_from_s3_storage_is_ranked_through_its_storage(
    label_studio: Any, seaweedfs: Any, api: LSApi, tiny_cls_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    files = make_pool(tmp_path / "imgs", n=6, size=64, seed=41)
    bucket = f"sync-{uuid.uuid4().hex[:10]}"
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    for path in files:
        client.put_object(Bucket=bucket, Key=f"cam/{path.name}", Body=path.read_bytes(), ContentType="image/jpeg")
    _, pid = _project(api)
    storage = api.post(
        "/api/storages/s3",
        {
            "project": pid,
            "title": "team bucket",
            "bucket": bucket,
            "prefix": "cam/",
            "presign": True,
            "use_blob_urls": True,
            "recursive_scan": True,
            "s3_endpoint": seaweedfs.endpoint,
            "aws_access_key_id": LOCAL_ACCESS_KEY,
            "aws_secret_access_key": LOCAL_SECRET_KEY,
            "region_name": "us-east-1",
        },
    )
    api.post(f"/api/storages/s3/{storage['id']}/sync", {})
    before = api.tasks(pid)
    assert len(before) == 6
    raw = api.get(f"/api/tasks/{before[0]['id']}", resolve_uri="false")["data"]["image"]
    assert raw.startswith(f"s3://{bucket}/cam/")

    # curate has no S3 credentials of its own: the images come through the project's storage
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    out = curate_json("select", "--pool", f"ls://{pid}", "--model", str(tiny_cls_model), "--budget", "2", "--db", db)
    assert out["scoring"]["scored"] == 6 and out["scoring"]["failed"] == 0, out["scoring"]
    assert sorted(t["id"] for t in api.tasks(pid)) == sorted(t["id"] for t in before)
    tag = out["ranking"]["model_version_tag"]
    assert {p["task"] for p in api.predictions(pid) if p["model_version"] == tag} == {t["id"] for t in before}
    assert out["items"][0]["task_id"] == fresh_annotator(label_studio.url).get(f"/api/projects/{pid}/next")["id"]
    # the content ids are the SHA-256 of the objects' bytes
    import hashlib

    expected = {hashlib.sha256(p.read_bytes()).hexdigest()[:32] for p in files}
    assert {row["item_id"] for row in out["items"]} <= expected
    # a rescan reads nothing again
    rescan = curate_json("score", "--pool", f"ls://{pid}", "--model", str(tiny_cls_model), "--db", db)
    assert rescan["scored"] == 0 and rescan["new_items"] == 0 and rescan["tasks"]["linked"] == 0

    # pool.label_studio_s3: direct reads the same objects with curate's own S3 credentials instead
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CURATE_POOL__LABEL_STUDIO_S3", "direct")
    fresh = f"sqlite:///{tmp_path / 'direct.db'}"
    direct = curate_json("score", "--pool", f"ls://{pid}", "--model", str(tiny_cls_model), "--db", fresh)
    assert direct["scored"] == 6 and direct["failed"] == 0 and direct["skipped_files"] == []


def test_a_project_curate_pushed_to_takes_foreign_tasks_too(
    label_studio: Any, ls_env: dict[str, str], ls_pool: Path, api: LSApi, tiny_cls_model: Path, tmp_path: Path
) -> None:
    """Tasks curate pushed and tasks someone imported later are ranked together; curate's own are not read again
    and nothing is duplicated."""
    title = f"mix-{uuid.uuid4().hex[:8]}"
    db = f"sqlite:///{tmp_path / 'c.db'}"
    model = str(tiny_cls_model)
    pushed = curate_json(
        "select", "--pool", str(ls_pool), "--model", model, "--budget", "4", "--project", title, "--db", db
    )
    assert pushed["push"]["pushed"] == 4
    pid = api.project_by_title(title)["id"]
    extra = make_pool(ls_pool / "later", n=3, size=80, seed=51)
    rel = ls_pool.relative_to(Path(ls_env["CURATE_LABEL_STUDIO__DOCUMENT_ROOT"])).as_posix()
    api.post(f"/api/projects/{pid}/import", [{"image": f"/data/local-files/?d={rel}/later/{p.name}"} for p in extra])

    out = curate_json("select", "--pool", f"ls://{title}", "--model", model, "--budget", "2", "--db", db)
    assert out["scoring"]["tasks"]["linked"] == 3 and out["scoring"]["scored"] == 3  # curate's 4 not read again
    tasks = api.tasks(pid)
    assert len(tasks) == 7
    tag = out["ranking"]["model_version_tag"]
    assert {p["task"] for p in api.predictions(pid) if p["model_version"] == tag} == {t["id"] for t in tasks}
    assert out["items"][0]["task_id"] == fresh_annotator(label_studio.url).get(f"/api/projects/{pid}/next")["id"]


def test_an_ls_pools_test_set_is_its_own_tasks_marked_in_place(
    label_studio: Any,
    ls_root: Path,
    api: LSApi,
    tiny_cls_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from curation.training.resolve import labeled_examples
    from curation.training.testset import split_test
    from store import Store

    folder = ls_root / f"ext-{uuid.uuid4().hex[:8]}"
    files = make_pool(folder, n=10, size=64, seed=41)
    title, pid = _project(api)
    api.post("/api/storages/localfiles", {"project": pid, "path": str(folder), "use_blob_urls": True, "title": "x"})
    rel = folder.relative_to(ls_root).as_posix()
    api.post(f"/api/projects/{pid}/import", [{"image": f"/data/local-files/?d={rel}/{p.name}"} for p in files])
    before = {t["id"]: t for t in api.tasks(pid)}
    annotated = min(before)
    api.annotate(annotated, _choice("circle"))  # labeled before the draw: never drawn

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    common = ("--pool", f"ls://{title}", "--model", str(tiny_cls_model), "--db", db)
    drawn = curate_json("testset", "draw", "--size", "4", *common)
    assert drawn["drawn"] == 4 and drawn["size"] == 4 and drawn["marked"] == 4 and drawn["push"] is None
    assert drawn["queue"]["changed"] and drawn["queue"]["queue_size"] == 9

    after = {t["id"]: t for t in api.tasks(pid)}
    assert sorted(after) == sorted(before)  # no task created, none deleted
    marked = {t for t, task in after.items() if task["data"].get("curate_set") == "test"}
    assert len(marked) == 4 and annotated not in marked
    assert all((after[t].get("meta") or {}).get("curate_set") == "test" for t in marked)
    assert all(after[t]["data"]["image"] == before[t]["data"]["image"] for t in after)  # the image is kept
    # label_studio.test_set_every 1 (the default): Label Studio's own label stream serves a test task first
    assert fresh_annotator(label_studio.url).get(f"/api/projects/{pid}/next")["id"] in marked

    again = curate_json("testset", "draw", "--size", "4", *common)  # a rerun draws and marks none more
    assert again["drawn"] == 0 and again["size"] == 4 and again["marked"] == 0
    refused = runner.invoke(app, ["testset", "draw", "--size", "5", "--no-push", *common, "--json"])
    assert refused.exit_code != 0 and "--no-push" in refused.output
    # train.test_set_size: the loop tops it up from the project's tasks too
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("train:\n  test_set_size: 5\n")
    turn = curate_json("loop", "--config", str(cfg), "--pool", f"ls://{title}", "--min-new-labels", "1000", "--db", db)
    assert turn["test_set"]["drawn"] == 1 and turn["test_set"]["size"] == 5 and turn["test_set"]["marked"] == 1
    after = {t["id"]: t for t in api.tasks(pid)}
    assert sorted(after) == sorted(before)
    marked = {t for t, task in after.items() if task["data"].get("curate_set") == "test"}
    assert len(marked) == 5 and annotated not in marked

    # a test task's label is evaluation-only; another task's label is training data
    test_task = min(marked)
    other = min(set(after) - marked - {annotated})
    api.annotate(test_task, _choice("square"))
    api.annotate(other, _choice("square"))
    curate_json("pull", "--project", title, "--db", db)
    status = curate_json("testset", "status", "--db", db)
    assert status["size"] == 5 and status["labeled"] == 1 and status["queued"] == 4
    store = Store.open(db)
    try:
        tests = store.selections.test_items()
        train, test = split_test(labeled_examples(store, "classify", "latest"), tests)
        assert len(test) == 1 and len(train) == 2 and not {e.item_id for e in train} & set(tests)
    finally:
        store.close()
    exported = curate_json("export", "--out", str(tmp_path / "dataset"), "--db", db)
    assert exported["n_test"] == 1 and exported["n_train"] + exported["n_val"] == 2, exported
