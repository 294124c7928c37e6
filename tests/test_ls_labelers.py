"""The queue as a labeling team sees it, against a real Label Studio (issue 14): who is served what by default,
skipped and labeled tasks after ``pull`` + ``reprioritize``, a project someone switched back to Sequential
sampling, ``reprioritize`` without ``--pool``, and a one-off ``--model``. The browser view of the same is
tests/test_ls_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ls_support import LSApi, fresh_annotator
from tests.test_labelstudio import api, curate, curate_json, select_args, title

__all__ = ["api"]  # the fixture, shared with tests/test_labelstudio.py
pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
CHOICE = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["square"]}}]


def _ranked_task_ids(api: LSApi, project_id: int, items: list[dict[str, Any]]) -> list[int]:
    """The project's task ids in the selection's rank order."""
    by_cid = {t["data"]["curation_id"]: t["id"] for t in api.tasks(project_id)}
    return [by_cid[r["item_id"]] for r in sorted(items, key=lambda r: r["rank"])]


def _next(user: LSApi, project_id: int) -> int:
    return int(user.get(f"/api/projects/{project_id}/next")["id"])


def test_two_labelers_are_served_curates_rank_order_with_the_default_strategy(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    name = title()
    selected = curate_json(*select_args(ls_pool, tiny_cls_model, name, f"sqlite:///{tmp_path / 'c.db'}", 8))
    assert selected["strategy"] == "hybrid" and len({r["cluster"] for r in selected["items"]}) > 1
    project = api.project_by_title(name)
    ranked = _ranked_task_ids(api, project["id"], selected["items"])
    first, second = fresh_annotator(label_studio.url), fresh_annotator(label_studio.url)
    served = []
    for user in (first, first, second, first, second, second):
        task = _next(user, project["id"])
        served.append(task)
        user.annotate(task, CHOICE)
    assert served == ranked[:6]  # 1, 2, 3, … whoever asks: no cluster interleaving by default


def test_skipped_and_labeled_tasks_after_pull_and_reprioritize(
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
    selected = curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 6, "--strategy", "entropy"))
    project = api.project_by_title(name)
    pid = project["id"]
    ranked = _ranked_task_ids(api, pid, selected["items"])
    shown = {p["task"]: p for p in api.predictions(pid) if p["model_version"] == project["model_version"]}
    skipper, other = fresh_annotator(label_studio.url), fresh_annotator(label_studio.url)
    assert _next(skipper, pid) == ranked[0]
    skipper.annotate(ranked[0], [], cancelled=True)
    assert _next(skipper, pid) == ranked[1]  # the skipper goes on; the skipped task waits for the others
    skipper.annotate(ranked[1], CHOICE)
    pulled = curate_json("pull", "--project", name, "--db", db)
    assert (pulled["labeled_tasks"], pulled["skipped_tasks"]) == (1, 1)
    again = curate_json("pull", "--project", name, "--db", db)
    assert (again["labeled_tasks"], again["skipped_tasks"]) == (0, 0)  # re-read tasks are not new labels
    common = ("--project", name, "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--db", db)
    result = curate_json("reprioritize", *common, "--strategy", "margin", "--force")
    assert result["changed"] and result["queue_size"] == 5  # the skipped task stays ranked
    project = api.project_by_title(name)
    assert project["skip_queue"] == "REQUEUE_FOR_OTHERS"
    live = {p["task"]: p for p in api.predictions(pid) if p["model_version"] == project["model_version"]}
    assert ranked[0] in live and ranked[1] not in live
    # "requeue for others": someone else is served the skipped task in its new rank order, never the skipper
    order = [t["task_id"] for t in result["top"]]
    assert _next(other, pid) == order[0]
    assert _next(skipper, pid) != ranked[0]
    # the labeled task keeps the prediction it was labeled with, under the model's own version
    kept = [p for p in api.predictions(pid) if p["task"] == ranked[1]]
    assert [p["model_version"] for p in kept] == [selected["model_version"]]
    assert kept[0]["result"] == shown[ranked[1]]["result"] and kept[0]["score"] == shown[ranked[1]]["score"]
    versions = api.get(f"/api/projects/{pid}/model-versions/")
    assert [v for v in versions if v.startswith("curate-")] == [project["model_version"]]

    # an annotation deleted in Label Studio is no longer a label here
    annotation = next(a for a in api.tasks(pid) if a["id"] == ranked[1])["annotations"][0]["id"]
    api.client.delete(f"/api/annotations/{annotation}/").raise_for_status()
    gone = curate_json("pull", "--project", name, "--db", db)
    assert gone["deleted_annotations"] == 1
    assert curate_json("status", "--db", db)["counts"]["labeled"] == 0


def test_a_plain_reprioritize_repairs_sampling_someone_changed_and_needs_no_pool(
    tmp_path: Path, ls_env: dict[str, str], ls_pool: Path, tiny_cls_model: Path, api: LSApi, label_studio: Any
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 5, "--strategy", "entropy"))
    # no --pool: the database knows the project's pool
    same = ("--project", name, "--model", str(tiny_cls_model), "--strategy", "entropy", "--db", db)
    assert curate_json("reprioritize", *same)["changed"]  # the first ranking reprioritize knows
    project = api.project_by_title(name)
    tag = project["model_version"]
    api.client.patch(f"/api/projects/{project['id']}", json={"sampling": "Sequential sampling"}).raise_for_status()
    repaired = curate_json("reprioritize", *same)
    assert repaired["changed"] and "Sequential sampling" in repaired["reason"]
    project = api.project_by_title(name)
    assert (project["sampling"], project["model_version"]) == ("Uncertainty sampling", tag)
    noop = curate_json("reprioritize", *same)
    assert not noop["changed"] and noop["model_note"] is None
    # a one-off --model that is not the registry's current one says so
    code, _out, err = curate("reprioritize", *same, "--model-version", "other")
    assert code == 0, err
    assert "not the current model" in err and "curate models promote other" in err
