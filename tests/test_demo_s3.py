"""``curate demo --s3``: the whole demo from a local SeaweedFS bucket into a local Label Studio with its S3 storage
connected; both servers are stopped afterwards."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.demo import DEMO_BUCKET, DEMO_PREFIX
from tests.ls_support import LSApi

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_demo_s3_runs_from_a_bucket_into_label_studio_and_stops_both(tmp_path: Path, tiny_cls_model: Path) -> None:
    root = tmp_path / "demo"
    weights = root / "model" / "train" / "weights" / "best.pt"
    weights.parent.mkdir(parents=True)
    shutil.copy(tiny_cls_model, weights)  # the demo reuses a trained model: no training in the test
    port = _free_port()
    result = CliRunner().invoke(
        app, ["demo", "--s3", "--dir", str(root), "--budget", "5", "--no-serve", "--port", str(port), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["selected"] == 5 and summary["scoring"]["pool"] == f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
    assert all(row["path"].startswith(f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}") for row in summary["items"])
    assert summary["scoring"]["failed"] >= 1  # the broken files planted in the pool fail from S3 as from disk

    weed_ports = json.loads((root / "seaweedfs" / "ports.json").read_text())
    assert not _listening(port) and not any(_listening(p) for p in weed_ports)  # both servers stopped

    # run again with --serve off but keep the servers up long enough to look: the storage and tasks are there
    from curation.devtools.demo import demo_login, start_demo_label_studio, start_demo_seaweedfs

    objects, uri = start_demo_seaweedfs(root, root / "pool")
    assert objects.ports == weed_ports  # the same endpoint as the project's storage
    server, login = start_demo_label_studio(root, port)
    try:
        api = LSApi(server.url, demo_login(root).api_key)
        project = api.project_by_title("curate demo queue (S3)")
        storages = api.get("/api/storages/s3", project=project["id"])
        assert [(s["bucket"], s["prefix"]) for s in storages] == [(DEMO_BUCKET, DEMO_PREFIX)]
        tasks = api.tasks(project["id"])
        assert len(tasks) == 5
        task = tasks[0]
        raw = api.get(f"/api/tasks/{task['id']}", resolve_uri="false")["data"]["image"]
        assert raw.startswith(uri)
        shown = api.get(f"/api/tasks/{task['id']}")["data"]["image"]
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30, follow_redirects=True) as browser:
            image = browser.get(shown, headers={"Authorization": f"Token {login.api_key}"})
        assert image.status_code == 200 and image.content == (root / "pool" / raw[len(uri) :]).read_bytes()
    finally:
        server.stop()
        objects.stop()
