"""Against a real Label Studio: several annotations of one task resolved by ``pull.resolve`` (the ground-truth flag
set in Label Studio), and Label Studio's own JSON export imported with ``curate labels import``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from tests.ls_support import LSApi

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
runner = CliRunner()


def curate_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_resolution_rules_and_a_label_studio_export(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, label_studio: Any
) -> None:
    api = LSApi(label_studio.url, label_studio.api_key)
    name = f"t-{uuid.uuid4().hex[:10]}"
    db = f"sqlite:///{tmp_path / 'c.db'}"
    pool, model = str(ls_pool), str(tiny_cls_model)
    curate_json("select", "--pool", pool, "--model", model, "--budget", "3", "--project", name, "--db", db)
    project = api.project_by_title(name)
    tasks = api.tasks(project["id"])
    first, second = tasks[0], tasks[1]
    api.annotate(first["id"], choice("circle"))
    truth = api.annotate(first["id"], choice("square"))
    api.client.patch(f"/api/annotations/{truth['id']}", json={"ground_truth": True}).raise_for_status()
    api.annotate(first["id"], choice("circle"))
    api.annotate(first["id"], choice("triangle"))  # the latest
    api.annotate(second["id"], choice("square"))
    assert curate_json("pull", "--project", name, "--db", db)["new_annotations"] == 5

    def labels(rule: str) -> dict[str, str]:
        config = tmp_path / f"{rule}.yaml"
        config.write_text(f"pull:\n  resolve: {rule}\n")
        out = tmp_path / f"export-{rule}"
        curate_json("export", "--out", str(out), "--db", db, "--config", str(config))
        rows = (out / "manifest.csv").read_text().splitlines()[1:]
        return {r.split(",")[2]: r.split(",")[4] for r in rows}

    cid = first["data"]["curation_id"]
    assert labels("latest")[cid] == "triangle"
    assert labels("majority")[cid] == "circle"
    assert labels("ground_truth")[cid] == "square"

    # Label Studio's own JSON export, imported into a fresh database: matched by curation_id, images registered
    # from the pool folder given with --images
    exported = api.client.get(f"/api/projects/{project['id']}/export", params={"exportType": "JSON"})
    exported.raise_for_status()
    export_file = tmp_path / "ls-export.json"
    export_file.write_bytes(exported.content)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    curate_json("score", "--pool", pool, "--model", model, "--db", other)
    report = curate_json("labels", "import", str(export_file), "--db", other)
    assert (report["kind"], report["labels"], report["matched"], report["imported"]) == ("label-studio", 2, 2, 2)
