"""An object-store pool in a real Label Studio: tasks reference ``s3://bucket/key``, ``curate select`` connects
the project's S3 import storage, and the image loads the way the labeling UI loads it (the task's resolve URL,
then Label Studio's presigned redirect to the S3 server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import make_pool
from tests.ls_support import LSApi

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_label_studio_loads_s3_pool_images_through_its_s3_storage(
    label_studio: Any, seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_pool(tmp_path / "imgs", n=8, size=48, seed=9)
    bucket = f"ls-{uuid.uuid4().hex[:10]}"
    client = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    for path in files:
        client.put_object(Bucket=bucket, Key=f"frames/{path.name}", Body=path.read_bytes(), ContentType="image/jpeg")
    for key, value in {**seaweedfs.env(), "LABEL_STUDIO_URL": label_studio.url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.api_key)
    title = f"s3-{uuid.uuid4().hex[:8]}"
    args = ["select", "--pool", f"s3://{bucket}/frames/", "--model", str(tiny_cls_model), "--budget", "3"]
    args += ["--project", title, "--db", f"sqlite:///{tmp_path / 'c.db'}", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)
    assert seaweedfs.env()["AWS_SECRET_ACCESS_KEY"] not in result.output

    api = LSApi(label_studio.url, label_studio.api_key)
    project = api.project_by_title(title)
    storages = api.get("/api/storages/s3", project=project["id"])
    assert [(s["bucket"], s["prefix"], s["presign"]) for s in storages] == [(bucket, "frames/", True)]
    assert storages[0]["s3_endpoint"] == seaweedfs.endpoint
    tasks = api.tasks(project["id"])
    assert len(tasks) == 3
    by_name = {p.name: p.read_bytes() for p in files}
    for task in tasks:
        raw = api.get(f"/api/tasks/{task['id']}", resolve_uri="false")["data"]["image"]
        assert raw.startswith(f"s3://{bucket}/frames/")
        shown = api.get(f"/api/tasks/{task['id']}")["data"]["image"]  # what the labeling UI receives
        assert shown.startswith(f"/tasks/{task['id']}/resolve/?fileuri=")
        with httpx.Client(base_url=label_studio.url, trust_env=False, timeout=30) as browser:
            response = browser.get(shown, headers={"Authorization": f"Token {label_studio.api_key}"})
            assert response.status_code in (302, 303), response.text[:300]
            presigned = response.headers["location"]
            assert presigned.startswith(seaweedfs.endpoint) and "X-Amz-Signature" in presigned
            image = browser.get(presigned)
        assert image.status_code == 200
        assert image.content == by_name[raw.rsplit("/", 1)[1]]
