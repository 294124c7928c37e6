"""Against a real Label Studio server: push, the prioritized label stream, idempotency under faults, pull."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import draw_shapes, make_pool
from curation.errors import ExitCode
from tests.ls_support import FaultProxy, LSApi, fresh_annotator

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def curate(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def curate_json(*args: str) -> dict[str, Any]:
    code, out, err = curate(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def select_args(pool: Path, model: Path, name: str, db: str, budget: int, *extra: str) -> tuple[str, ...]:
    """``curate select`` of ``budget`` items into project ``name``: the arguments most tests here share."""
    return (
        "select",
        "--pool",
        str(pool),
        "--model",
        str(model),
        "--budget",
        str(budget),
        "--project",
        name,
        "--db",
        db,
        *extra,
    )


def title() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def api(label_studio: Any) -> LSApi:
    return LSApi(label_studio.url, label_studio.api_key)


def curation_ids(api: LSApi, project_id: int) -> list[str]:
    return [t["data"]["curation_id"] for t in api.tasks(project_id)]


def assert_tasks_once(api: LSApi, title: str, n: int) -> None:
    """The project holds exactly ``n`` curate tasks, each item once."""
    ids = curation_ids(api, api.project_by_title(title)["id"])
    assert len(ids) == n and len(set(ids)) == n, sorted(ids)


def lowest_score_task(api: LSApi, project: dict[str, Any]) -> int:
    tag = project["model_version"]
    preds = [p for p in api.predictions(project["id"]) if p["model_version"] == tag]
    return min(preds, key=lambda p: p["score"])["task"]


def test_acceptance_flow(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    label_studio: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURATE_LABEL_STUDIO__SUPERSEDED_GRACE_S", "0")  # superseded rankings deleted at once
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    args = (
        "select",
        "--pool",
        str(ls_pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "10",
        "--project",
        name,
        "--db",
        db,
    )
    first = curate_json(*args)
    assert first["push"]["pushed"] == 10 and first["push"]["created_project"]
    project = api.project_by_title(name)
    assert project["sampling"] == "Uncertainty sampling"
    assert project["model_version"] == first["push"]["model_version_tag"]
    tasks = api.tasks(project["id"])
    assert len(tasks) == 10
    rank1 = first["items"][0]["item_id"]
    by_cid = {t["data"]["curation_id"]: t for t in tasks}
    # every task carries a prediction under the active tag with the model's top class; rank 1 scores lowest
    preds = [p for p in api.predictions(project["id"]) if p["model_version"] == project["model_version"]]
    assert len(preds) == 10 and all(p["result"][0]["type"] == "choices" for p in preds)
    assert min(preds, key=lambda p: p["score"])["task"] == by_cid[rank1]["id"]
    # the image is served by Label Studio
    image = by_cid[rank1]["data"]["image"]
    assert image.startswith("/data/local-files/?d=")
    assert api.client.get(image).status_code == 200

    annotator = fresh_annotator(label_studio.url)
    served = annotator.get(f"/api/projects/{project['id']}/next")
    assert served["data"]["curation_id"] == rank1

    # the same command again: 10 new items, no duplicate curation_id
    second = curate_json(*args)
    assert second["push"]["pushed"] == 10
    ids = curation_ids(api, project["id"])
    assert len(ids) == 20 and len(set(ids)) == 20
    # a push with nothing new changes nothing
    again = curate_json("push", "--project", name, "--db", db)
    assert again["pushed"] == 0 and len(curation_ids(api, project["id"])) == 20

    # annotate three tasks (one of them as a skip afterwards on another task)
    tasks = api.tasks(project["id"])
    for task in tasks[:3]:
        api.annotate(
            task["id"],
            [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["square"]}}],
        )
    api.annotate(tasks[3]["id"], [], cancelled=True)
    pulled = curate_json("pull", "--project", name, "--db", db)
    assert pulled["new_annotations"] == 4 and pulled["labeled_tasks"] == 3 and pulled["skipped_tasks"] == 1
    status = curate_json("status", "--db", db)
    assert status["counts"]["labeled"] == 3 and status["counts"]["skipped"] == 1
    assert curate_json("pull", "--project", name, "--db", db)["new_annotations"] == 0  # rerun: nothing twice

    # reprioritize with another strategy: the new rank 1 is the lowest-score task under the project's tag
    before = api.project_by_title(name)["model_version"]
    result = curate_json(
        "reprioritize",
        "--strategy",
        "margin",
        "--project",
        name,
        "--pool",
        str(ls_pool),
        "--model",
        str(tiny_cls_model),
        "--db",
        db,
    )
    # 20 tasks, 3 labeled; the skipped one stays ranked (the project requeues skips for others: the default)
    assert result["changed"] and result["queue_size"] == 17
    project = api.project_by_title(name)
    assert project["model_version"] == result["model_version_tag"] != before
    new_rank1 = result["top"][0]["task_id"]
    assert lowest_score_task(api, project) == new_rank1
    assert fresh_annotator(label_studio.url).get(f"/api/projects/{project['id']}/next")["id"] == new_rank1
    # only one curate ranking is left in the project (the Data Manager's score column stays true)
    versions = api.get(f"/api/projects/{project['id']}/model-versions/")
    assert [v for v in versions if v.startswith("curate-")] == [project["model_version"]]
    # unchanged inputs: a fast no-op
    noop = curate_json(
        "reprioritize",
        "--strategy",
        "margin",
        "--project",
        name,
        "--pool",
        str(ls_pool),
        "--model",
        str(tiny_cls_model),
        "--db",
        db,
    )
    assert not noop["changed"] and api.project_by_title(name)["model_version"] == project["model_version"]


def test_reprioritize_changes_what_next_serves(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 12, "--strategy", "entropy"))
    project = api.project_by_title(name)
    head_before = fresh_annotator(label_studio.url).get(f"/api/projects/{project['id']}/next")["id"]
    result = curate_json(
        "reprioritize",
        "--strategy",
        "random",
        "--project",
        name,
        "--pool",
        str(ls_pool),
        "--model",
        str(tiny_cls_model),
        "--db",
        db,
    )
    head_after = fresh_annotator(label_studio.url).get(f"/api/projects/{project['id']}/next")["id"]
    assert head_after == result["top"][0]["task_id"]
    assert (head_after == head_before) == (result["top"][0]["was"] == 1)
    assert 0 < result["served_after_s"] <= result["seconds"]
    same = ("--project", name, "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--db", db)
    assert not curate_json("reprioritize", "--strategy", "random", *same)["changed"]  # nothing changed: no-op
    # a changed setting that affects the order is a change, not a no-op
    assert curate_json("reprioritize", "--strategy", "random", "--min-distance", "0.2", *same)["changed"]


def test_a_task_deleted_in_label_studio_leaves_the_queue(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    name = title()
    common = ("--pool", str(ls_pool), "--model", str(tiny_cls_model), "--project", name)
    db = ("--db", f"sqlite:///{tmp_path / 'c.db'}")
    curate_json("select", *common, *db, "--budget", "8")
    project = api.project_by_title(name)
    victim = lowest_score_task(api, project)
    api.client.delete(f"/api/tasks/{victim}/").raise_for_status()
    code, _, err = curate("reprioritize", *common, *db, "--strategy", "random", "--force")
    assert code == 0, err
    assert "deleted in Label Studio" in err
    project = api.project_by_title(name)
    live = [p for p in api.predictions(project["id"]) if p["model_version"] == project["model_version"]]
    assert len(live) == 7 and victim not in {p["task"] for p in live}
    again = curate_json("reprioritize", *common, *db, "--strategy", "entropy")
    assert again["queue_size"] == 7


def test_an_image_label_studio_cannot_serve_is_skipped_not_fatal(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_pool(tmp_path / "elsewhere", n=1, size=80, seed=9)
    inside = sorted(ls_pool.glob("*.jpg"))[:5]
    manifest = ls_pool / "list.txt"
    files = [*inside, *sorted((tmp_path / "elsewhere").rglob("*.jpg"))]
    assert len(files) == 6
    manifest.write_text("\n".join(str(p) for p in files) + "\n")
    name = title()
    monkeypatch.setenv("CURATE_POOL__ALLOW_OUTSIDE_ROOT", "true")  # the manifest lists a file outside its folder
    result = curate_json(*select_args(manifest, tiny_cls_model, name, f"sqlite:///{tmp_path / 'c.db'}", 6))
    assert result["push"]["pushed"] == 5
    assert [Path(p).parent for p in result["push"]["missing_files"]] == [tmp_path / "elsewhere"]
    assert len(curation_ids(api, api.project_by_title(name)["id"])) == 5


def test_queue_size_tops_up(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(
        "select", "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--budget", "3", "--project", name, "--db", db
    )
    result = curate_json(
        "reprioritize",
        "--queue-size",
        "8",
        "--project",
        name,
        "--pool",
        str(ls_pool),
        "--model",
        str(tiny_cls_model),
        "--db",
        db,
    )
    assert result["topped_up"] == 5 and result["queue_size"] == 8
    project = api.project_by_title(name)
    ids = curation_ids(api, project["id"])
    assert len(ids) == 8 == len(set(ids))
    tag = project["model_version"]
    scores = sorted(p["score"] for p in api.predictions(project["id"]) if p["model_version"] == tag)
    assert len(scores) == 8 and scores == sorted(set(scores))


def test_detection_and_segmentation_pre_annotations(
    tmp_path: Path, ls_env: dict[str, str], ls_root: Path, tiny_det_model: Path, tiny_seg_model: Path, api: LSApi
) -> None:
    pool = ls_root / f"det-{uuid.uuid4().hex[:6]}"
    make_pool(pool, n=6, size=96, seed=12)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scoring:\n  box_conf: 0.0005\n  max_det: 5\nstrategy:\n  detection:\n    conf: 0.0005\n")
    for model, tag_type, kind in (
        (tiny_det_model, "RectangleLabels", "rectanglelabels"),
        (tiny_seg_model, "PolygonLabels", "polygonlabels"),
    ):
        name = title()
        curate_json(*select_args(pool, model, name, f"sqlite:///{tmp_path / (kind + '.db')}", 4, "--config", str(cfg)))
        project = api.project_by_title(name)
        assert f"<{tag_type}" in project["label_config"]
        preds = [p for p in api.predictions(project["id"]) if p["model_version"] == project["model_version"]]
        assert len(preds) == 4
        regions = [r for p in preds for r in p["result"]]
        assert regions, f"no {kind} regions were pushed"
        for region in regions:
            assert region["type"] == kind
            assert region["original_width"] == 96 and region["original_height"] == 96
            value = region["value"]
            if kind == "rectanglelabels":
                assert 0 <= value["x"] <= 100 and 0 <= value["y"] <= 100 and value["width"] >= 0
                assert value["rectanglelabels"][0] in ("circle", "square", "triangle")
            else:
                assert len(value["points"]) >= 3
                assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in value["points"])


def test_exif_rotated_boxes_use_the_displayed_size(
    tmp_path: Path, ls_env: dict[str, str], ls_root: Path, tiny_det_model: Path, api: LSApi
) -> None:
    from PIL import Image

    pool = ls_root / f"exif-{uuid.uuid4().hex[:6]}"
    pool.mkdir()
    # a generated circle (the same whichever way the image is turned), as the tiny detector was trained on
    tile, _ = draw_shapes(np.random.default_rng(3), 96, ["circle"], 0.3, 0.4)
    img = Image.new("RGB", (160, 96), (30, 160, 60))
    img.paste(tile, (32, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated: 96 wide, 160 high
    img.save(pool / "rotated.jpg", exif=exif.tobytes())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scoring:\n  box_conf: 0.0001\n  max_det: 3\nstrategy:\n  detection:\n    conf: 0.0001\n")
    name = title()
    curate_json(*select_args(pool, tiny_det_model, name, f"sqlite:///{tmp_path / 'c.db'}", 1, "--config", str(cfg)))
    project = api.project_by_title(name)
    regions = [r for p in api.predictions(project["id"]) for r in p["result"]]
    assert regions and all((r["original_width"], r["original_height"]) == (96, 160) for r in regions)


def test_502_after_the_server_committed_creates_no_duplicates(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
    label_studio: Any,
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json("ls", "init", "--project", name, "--model", str(tiny_cls_model), "--pool", str(ls_pool), "--db", db)
    with FaultProxy(label_studio.url, mode="502-once") as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        result = curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 7))
        assert proxy.imports_forwarded == 1
    assert result["push"]["pushed"] == 7
    assert_tasks_once(api, name, 7)


def test_import_that_never_reached_the_server_is_held_then_imported_once_after_the_settle_time(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
    label_studio: Any,
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    common = ("--pool", str(ls_pool), "--model", str(tiny_cls_model), "--project", name, "--db", db)
    curate_json("ls", "init", "--project", name, "--model", str(tiny_cls_model), "--pool", str(ls_pool), "--db", db)
    with FaultProxy(label_studio.url, mode="502-before-import") as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        code, _, err = curate("select", *common, "--budget", "6")
        assert code == ExitCode.LABEL_STUDIO, err
        assert "not in the project" in err and "Traceback" not in err
        assert curation_ids(api, api.project_by_title(name)["id"]) == []
        held = curate_json("push", "--project", name, "--db", db)  # it might still commit: wait
        assert held["pushed"] == 0 and held["awaiting_import"] == 6
        monkeypatch.setenv("CURATE_LABEL_STUDIO__IMPORT_SETTLE_S", "0")  # settled, and provably absent
        rerun = curate_json("push", "--project", name, "--db", db)
    assert rerun["pushed"] == 6
    assert_tasks_once(api, name, 6)


def test_a_slow_import_answered_504_is_adopted_when_it_lands_never_imported_twice(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
    label_studio: Any,
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    with FaultProxy(label_studio.url, mode="504-slow") as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        code, _, err = curate(*select_args(ls_pool, tiny_cls_model, name, db, 6))
        assert code == ExitCode.LABEL_STUDIO, err
        assert "504" in err and "not in the project" in err and "Traceback" not in err
        # rerun at once, while the server is still importing: the held items are not imported again
        rerun = curate_json("push", "--project", name, "--db", db)
        assert rerun["pushed"] == 0 and rerun["awaiting_import"] == 6
        proxy.land()  # the slow import commits
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    project = api.project_by_title(name)
    ids = curation_ids(api, project["id"])
    assert len(ids) == 6 == len(set(ids))
    later = curate_json("push", "--project", name, "--db", db)
    assert later["reconciled"] == 6 and later["pushed"] == 0 and later["awaiting_import"] == 0
    ids = curation_ids(api, project["id"])
    assert len(ids) == 6 == len(set(ids))
    assert api.project_by_title(name)["model_version"] == later["model_version_tag"]  # adopted tasks are served


def test_two_databases_pushing_into_one_project_make_no_duplicates(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, postgres_url: str
) -> None:
    name = title()
    databases = (f"sqlite:///{tmp_path / 'first.db'}", postgres_url)
    pick = ("--strategy", "entropy")  # both databases select the same items
    for db in databases:  # the second has no task in the project yet
        curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 4, *pick))
    for db in databases:  # now it has: it must still look before importing
        result = curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 4, *pick))
    assert result["push"]["reconciled"] == 4 and result["push"]["pushed"] == 0
    assert_tasks_once(api, name, 8)


def test_existing_duplicates_are_removed_and_annotated_ones_reported(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    from curation.labelstudio.client import LabelStudioClient
    from curation.labelstudio.tasks import curate_tasks

    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 4))
    pid = api.project_by_title(name)["id"]
    original = {t["data"]["curation_id"]: t for t in api.tasks(pid)}
    a, b, c, d = sorted(original)
    api.post(f"/api/projects/{pid}/import", [original[x]["data"] for x in (a, b, c)])  # a user imports them again
    dup = {
        t["data"]["curation_id"]: t["id"] for t in api.tasks(pid) if t["id"] != original[t["data"]["curation_id"]]["id"]
    }
    choice = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["square"]}}]
    api.annotate(dup[b], choice)  # the newer one is annotated: it stays, the older empty one goes
    api.annotate(original[c]["id"], choice)  # both annotated: both stay, reported
    api.annotate(dup[c], [], cancelled=True)
    # the sweep behind reconcile, in keyset pages of 2: every task once, with its annotations counted
    swept = curate_tasks(LabelStudioClient(label_studio.url, label_studio.api_key), pid, page_size=2)
    assert {t.id: t.annotations for ts in swept.values() for t in ts} == {
        **{original[x]["id"]: 0 for x in (a, b, d)},
        original[c]["id"]: 1,
        dup[a]: 0,
        dup[b]: 1,
        dup[c]: 1,
    }
    result = curate_json("push", "--project", name, "--db", db)
    assert result["duplicates_removed"] == 2 and result["pushed"] == 0
    assert result["annotated_duplicates"] == [{"curation_id": c, "task_ids": [original[c]["id"], dup[c]]}]
    left = {t["id"]: t["data"]["curation_id"] for t in api.tasks(pid)}
    assert Counter(left.values()) == {a: 1, b: 1, c: 2, d: 1}
    assert dup[a] not in left and original[b]["id"] not in left and dup[b] in left
    assert curate_json("push", "--project", name, "--db", db)["duplicates_removed"] == 0


def _count_tasks(db: Path) -> int:
    """Tasks curate recorded (any other database error fails the test instead of reading as zero)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM ls_tasks").fetchone()[0])


def test_killed_after_import_committed_then_rerun(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    name = title()
    db = tmp_path / "c.db"
    env = {**os.environ}
    with FaultProxy(label_studio.url, mode="hang-after-import") as proxy:
        env["LABEL_STUDIO_URL"] = proxy.url
        cmd = [
            sys.executable,
            "-m",
            "cli",
            "select",
            "--pool",
            str(ls_pool),
            "--model",
            str(tiny_cls_model),
            "--budget",
            "9",
            "--project",
            name,
            "--db",
            f"sqlite:///{db}",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proxy.committed.wait(120), proc.communicate(timeout=5)
        time.sleep(0.5)  # the server has committed; curate is waiting for the answer
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    project = api.project_by_title(name)
    assert len(api.tasks(project["id"])) == 9  # in Label Studio, but curate never heard back
    assert _count_tasks(db) == 0
    result = curate_json("push", "--project", name, "--db", f"sqlite:///{db}")
    assert result["reconciled"] == 9 and result["pushed"] == 0
    ids = curation_ids(api, project["id"])
    assert len(ids) == 9 and len(set(ids)) == 9
    assert api.project_by_title(name)["model_version"] == result["model_version_tag"]


def test_bad_token_is_one_clear_error_and_records_nothing(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "f" * 40
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", secret)
    db = tmp_path / "c.db"
    code, out, err = curate(*select_args(ls_pool, tiny_cls_model, title(), f"sqlite:///{db}", 3, "--debug"))
    assert code == ExitCode.AUTH, err
    assert "refused the API key" in err and secret not in err + out
    code, out, err = curate(*select_args(ls_pool, tiny_cls_model, title(), f"sqlite:///{db}", 3))
    assert code == ExitCode.AUTH and "Traceback" not in err and len([x for x in err.splitlines() if x]) == 1
    assert db.exists() and secret.encode() not in db.read_bytes()  # the database is opened before the key check
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM selections").fetchone()[0] == 0


def test_server_down_is_a_clear_error(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    code, _, err = curate("push", "--project", title(), "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert code == ExitCode.LABEL_STUDIO and "cannot reach Label Studio at http://127.0.0.1:9" in err
    assert "Traceback" not in err


def test_secrets_never_reach_the_database(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, label_studio: Any
) -> None:
    db = tmp_path / "c.db"
    curate_json(*select_args(ls_pool, tiny_cls_model, title(), f"sqlite:///{db}", 2))
    for path in tmp_path.glob("c.db*"):
        assert label_studio.api_key.encode() not in path.read_bytes()


def test_project_config_mismatch_names_the_labels(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    name = title()
    api.post(
        "/api/projects",
        {
            "title": name,
            "label_config": (
                '<View><Image name="image" value="$image"/><Choices name="cls" toName="image">'
                '<Choice value="circle"/><Choice value="hexagon"/></Choices></View>'
            ),
        },
    )
    code, _, err = curate(
        "ls",
        "init",
        "--project",
        name,
        "--model",
        str(tiny_cls_model),
        "--pool",
        str(ls_pool),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert code == ExitCode.USAGE and "Traceback" not in err
    assert "square" in err and "triangle" in err and "hexagon" in err


def test_ls_init_adds_the_classes_a_grown_model_has_when_new_classes_are_allowed(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train.allow_new_classes: a model with a class the project lacks (one a round added) updates the project's
    labeling config through the API instead of failing; a label the model does not predict still fails."""
    name = title()
    created = api.post(
        "/api/projects",
        {
            "title": name,
            "label_config": (
                '<View><Image name="image" value="$image"/><Choices name="cls" toName="image">'
                '<Choice value="circle"/><Choice value="square"/></Choices></View>'
            ),
        },
    )
    args = ("ls", "init", "--project", name, "--model", str(tiny_cls_model), "--pool", str(ls_pool))
    db = ("--db", f"sqlite:///{tmp_path / 'c.db'}")
    code, _, err = curate(*args, *db)
    assert code == ExitCode.USAGE and "model classes missing from the project: triangle" in err
    monkeypatch.setenv("CURATE_TRAIN__ALLOW_NEW_CLASSES", "true")
    code, _, err = curate(*args, *db)
    assert code == 0, err
    project = api.get(f"/api/projects/{created['id']}")
    assert project["parsed_label_config"]["cls"]["labels"] == ["circle", "square", "triangle"]
    assert 'name="cls"' in project["label_config"]  # the project's own control kept its name


def test_ls_init_creates_a_matching_project(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    name = title()
    info = curate_json(
        "ls",
        "init",
        "--project",
        name,
        "--model",
        str(tiny_cls_model),
        "--pool",
        str(ls_pool),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert info["created"] and sorted(info["labels"]) == ["circle", "square", "triangle"]
    assert info["local_storage"] == str(ls_pool)
    again = curate_json(
        "ls",
        "init",
        "--project",
        name,
        "--model",
        str(tiny_cls_model),
        "--pool",
        str(ls_pool),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert not again["created"] and again["project_id"] == info["project_id"]


def test_pool_outside_the_document_root_is_refused(
    tmp_path: Path, ls_env: dict[str, str], tiny_cls_model: Path
) -> None:
    pool = tmp_path / "elsewhere"
    make_pool(pool, n=3, size=48)
    code, _, err = curate(*select_args(pool, tiny_cls_model, title(), f"sqlite:///{tmp_path / 'c.db'}", 2))
    assert code == ExitCode.USAGE and "document root" in err and "Traceback" not in err


def test_url_prefix_images_are_passed_through(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURATE_LABEL_STUDIO__URL_PREFIX", "s3://bucket/pools/a b")
    name = title()
    curate_json(*select_args(ls_pool, tiny_cls_model, name, f"sqlite:///{tmp_path / 'c.db'}", 2))
    images = [t["data"]["image"] for t in api.tasks(api.project_by_title(name)["id"])]
    assert all(i.startswith("s3://bucket/pools/a b/img_") and i.endswith(".jpg") for i in images)


def test_pull_is_incremental(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(
        "select", "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--budget", "5", "--project", name, "--db", db
    )
    project = api.project_by_title(name)
    tasks = api.tasks(project["id"])
    time.sleep(1.5)  # older than the pull's safety margin
    api.annotate(
        tasks[0]["id"],
        [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["circle"]}}],
    )
    assert curate_json("pull", "--project", name, "--db", db)["new_annotations"] == 1
    time.sleep(1.5)
    api.annotate(
        tasks[1]["id"],
        [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["triangle"]}}],
    )
    second = curate_json("pull", "--project", name, "--db", db)
    # only the newly annotated task and the last one of the previous pull (re-read within the 1 s margin)
    assert second["new_annotations"] == 1 and second["tasks_seen"] == 2
    counts = Counter(a["labels"]["classes"][0] for a in _annotations(tmp_path / "c.db"))
    assert counts == {"circle": 1, "triangle": 1}


def test_pull_tells_the_models_guess_submitted_unchanged(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    """What the labeling UI sends for a pre-filled annotation (its ``parent_prediction``, and the prediction's
    regions with their ``origin``), stored by the real server: pull counts the one submitted as the model
    guessed, not the one whose class was changed nor the one made without a pre-annotation, and the regions
    curate writes carry the model's confidence and ``origin: prediction``."""
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 4))
    project = api.project_by_title(name)
    live = {p["task"]: p for p in api.predictions(project["id"]) if p["model_version"] == project["model_version"]}
    tasks = sorted(live)
    for prediction in live.values():
        (region,) = prediction["result"]
        assert region["origin"] == "prediction" and 0.0 < region["score"] <= 1.0
    classes = ["circle", "square", "triangle"]

    def submit(task: int, result: list[dict[str, Any]], parent: int | None) -> None:
        body = {"result": result, "was_cancelled": False, "lead_time": 1.5, "parent_prediction": parent}
        created = api.post(f"/api/tasks/{task}/annotations", body)
        assert created.get("parent_prediction") == parent, created

    guess = live[tasks[0]]["result"]
    submit(tasks[0], guess, live[tasks[0]]["id"])  # submitted as shown
    shown = live[tasks[1]]["result"][0]
    changed = {**shown, "value": {"choices": [next(c for c in classes if [c] != shown["value"]["choices"])]}}
    submit(tasks[1], [changed], live[tasks[1]]["id"])  # the labeler chose another class
    submit(tasks[2], live[tasks[2]]["result"], None)  # no pre-annotation (e.g. prelabeling off), same class
    pulled = curate_json("pull", "--project", name, "--db", db)
    assert pulled["new_annotations"] == 3 and pulled["unchanged_predictions"] == 1
    with sqlite3.connect(tmp_path / "c.db") as conn:
        flags = dict(conn.execute("SELECT task_id, unchanged_prediction FROM annotations").fetchall())
    assert flags == {tasks[0]: 1, tasks[1]: 0, tasks[2]: 0}


def test_prelabeling_off_keeps_the_queue_and_shows_no_guess(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    label_studio: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``label_studio.preannotate: false`` at ``ls init``: Label Studio's "Use predictions to prelabel tasks" goes
    off (which makes the server clear the project's model_version: curate switches its ranking back on), so the
    label stream still serves curate's order but hands the labeler no pre-annotation to accept; back on, it does."""
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 4))
    before = api.project_by_title(name)
    assert before["show_collab_predictions"] is True
    init = ("ls", "init", "--project", name, "--model", str(tiny_cls_model), "--db", db)
    monkeypatch.setenv("CURATE_LABEL_STUDIO__PREANNOTATE", "false")
    off = curate_json(*init)
    assert off["preannotate"] is False and off["preannotate_changed"] is True
    project = api.get(f"/api/projects/{before['id']}")
    assert project["show_collab_predictions"] is False
    assert project["model_version"] == before["model_version"] and project["sampling"] == "Uncertainty sampling"
    labeler = fresh_annotator(label_studio.url)
    served = labeler.get(f"/api/projects/{project['id']}/next")
    assert served["id"] == lowest_score_task(api, project) and served["predictions"] == []
    assert curate_json(*init)["preannotate_changed"] is False  # idempotent
    monkeypatch.setenv("CURATE_LABEL_STUDIO__PREANNOTATE", "true")
    assert curate_json(*init)["preannotate_changed"] is True
    again = labeler.get(f"/api/projects/{project['id']}/next")  # the task they hold, now with the model's guess
    assert again["id"] == served["id"] and len(again["predictions"]) == 1


def test_a_new_database_adopts_existing_tasks_instead_of_duplicating(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi
) -> None:
    name = title()
    args = ("select", "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--budget", "6", "--project", name)
    curate_json(*args, "--db", f"sqlite:///{tmp_path / 'first.db'}")
    # the database is lost; a new one selects the same items again
    result = curate_json(*args, "--db", f"sqlite:///{tmp_path / 'second.db'}")
    assert result["push"]["reconciled"] == 6 and result["push"]["pushed"] == 0
    assert_tasks_once(api, name, 6)


def _annotations(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return [{"labels": json.loads(row[0])} for row in conn.execute("SELECT labels FROM annotations")]


def test_diverse_selection_sets_prediction_clusters_at_the_head_of_the_queue(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURATE_LABEL_STUDIO__CLUSTER_WINDOW", "6")
    name = title()
    result = curate_json(
        *select_args(ls_pool, tiny_cls_model, name, f"sqlite:///{tmp_path / 'c.db'}", 9, "--strategy", "kcenter")
    )
    # the first 6 queue positions carry their cluster; the rest are not worth a request each
    expected = {r["item_id"]: r["cluster"] if r["rank"] <= 6 else None for r in result["items"]}
    project = api.project_by_title(name)
    by_task = {t["id"]: t["data"]["curation_id"] for t in api.tasks(project["id"])}
    preds = [p for p in api.predictions(project["id"]) if p["model_version"] == project["model_version"]]
    assert len(preds) == 9
    assert {by_task[p["task"]]: p["cluster"] for p in preds} == expected
    assert len({c for c in expected.values() if c is not None}) > 1


def test_personal_access_tokens_work_too(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real users often have a personal access token (a JWT refresh token) rather than a legacy token."""
    response = api.client.post("/api/token/")
    response.raise_for_status()  # the pinned Label Studio issues personal access tokens
    pat = response.json()["token"]
    assert pat.count(".") == 2  # a JWT
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    name = title()
    result = curate_json(*select_args(ls_pool, tiny_cls_model, name, f"sqlite:///{tmp_path / 'c.db'}", 3))
    assert result["push"]["pushed"] == 3
    for path in tmp_path.glob("c.db*"):
        assert pat.encode() not in path.read_bytes()


def test_pull_paging_misses_nothing_when_tasks_are_updated_mid_pull(api: LSApi, label_studio: Any) -> None:
    from curation.labelstudio.client import LabelStudioClient
    from curation.labelstudio.tasks import updated_tasks

    project = api.post(
        "/api/projects",
        {
            "title": title(),
            "label_config": '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
            '<Choice value="a"/></Choices></View>',
        },
    )
    api.post(f"/api/projects/{project['id']}/import", [{"image": f"/x/{i}.jpg"} for i in range(7)])
    all_ids = {t["id"] for t in api.tasks(project["id"])}
    client = LabelStudioClient(label_studio.url, label_studio.api_key)
    seen: list[int] = []
    for number, page in enumerate(updated_tasks(client, project["id"], None, page_size=2)):
        seen.extend(int(t["id"]) for t in page)
        if number == 0:  # a labeler finishes a task of the first page: it moves to the end of the order
            result = [{"from_name": "c", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]
            api.annotate(int(page[0]["id"]), result)
    assert set(seen) == all_ids
    assert len(seen) == len(all_ids) + 1  # the updated task comes again, with its annotation
