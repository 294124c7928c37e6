"""The test set end to end with real components: a real Label Studio, a tiny YOLO classifier, SQLite — drawn at
random, queued first and marked, labeled, kept out of training, evaluated on, exported as split test."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from store import Store
from tests.ls_support import LSApi
from tests.test_loop import annotate, api, curate_json, labeled_pool, setup  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_a_random_test_set_is_queued_first_labeled_and_only_evaluated_on(
    setup: dict[str, Any],  # noqa: F811
    api: LSApi,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = setup
    common = ("--config", s["cfg"], "--db", s["db"])
    cfg = Path(s["cfg"])
    cfg.write_text(cfg.read_text().replace("train:\n", "train:\n  test_set_size: 9\n"))
    curate_json("select", "--model", s["model"], "--budget", "24", *common)
    turn = curate_json("loop", *common)  # train.test_set_size: the loop draws the test set and queues it
    drawn = turn["test_set"]
    assert drawn["drawn"] == 9 and drawn["size"] == 9 and drawn["push"]["pushed"] == 9
    again = curate_json("testset", "draw", *common)  # a rerun draws and imports nothing
    assert again["drawn"] == 0 and again["size"] == 9 and again["push"] is None

    project = api.project_by_title(s["project"])
    tasks = api.tasks(project["id"])
    assert len(tasks) == 33
    marked = [t for t in tasks if t["data"].get("curate_set") == "test"]
    assert len(marked) == 9 and all((t.get("meta") or {}).get("curate_set") == "test" for t in marked)
    # label_studio.test_set_every 1 (the default): Label Studio's own label stream serves a test task first
    first = api.get(f"/api/projects/{project['id']}/next")
    assert first["id"] in {t["id"] for t in marked}

    assert annotate(api, project["id"], s["truth"], 33) == 33
    curate_json("pull", *common)
    status = curate_json("testset", "status", *common)
    assert status["size"] == 9 and status["labeled"] == 9 and status["queued"] == 0

    trained = curate_json("train", *common)
    assert trained["trained"], trained["reason"]
    assert trained["eval_source"] == "test set" and trained["n_eval"] == 9
    assert trained["n_train"] + trained["n_val"] == 24 and trained["excluded_eval_items"] == 9
    assert trained["interval"]["n_items"] == 9  # the promotion read the paired interval on the test set

    store = Store.open(s["db"])
    try:
        tests = set(store.selections.test_items())
        mv = store.models.get(trained["version"])
        assert mv is not None and (mv.metrics or {})["evaluation"] == {"source": "test set", "n_items": 9}
        assert not {e.item_id for e, _ in store.labels.trained_on(mv.id)} & tests  # never trained on
    finally:
        store.close()

    exported = curate_json("export", "--out", str(tmp_path / "export"), *common)
    assert exported["n_test"] == 9 and exported["n_train"] + exported["n_val"] == 24
    with (tmp_path / "export" / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["split"] == "test" for r in rows) == 9
    assert all(r["path"].startswith("test/") for r in rows if r["split"] == "test")
