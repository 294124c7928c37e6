"""An in-memory Label Studio implementing ``LabelStudioAPI``, for fast tests of curate's queue logic.

It follows the real server's behaviour as checked in /work/shared/NOTES.md and by tests/test_labelstudio.py:
- the label stream (``next_task``) serves, under "Uncertainty sampling", the unlabeled task whose prediction
  tagged with the project's ``model_version`` has the lowest score (otherwise: no ranking, "random");
- bulk prediction import rejects the whole request (400) if one task id is not in the project, and ignores
  ``cluster``, as task import does for inline predictions; scores outside [0, 1] are dropped;
- re-importing the same data creates duplicate tasks (no deduplication);
- task listings are Data Manager queries (``data.*`` equal / not_empty, ``updated_at`` greater_or_equal, one
  ordering), paged; a page past the end is a 404 on the server, which the client turns into ``[]``;
- ``updated_at`` moves when a task is created or annotated; the clock can be frozen to make same-instant updates.
- task listings can restrict to ``id`` (greater / equal) and report ``total_annotations`` and
  ``cancelled_annotations``; the Data Manager's ``delete_tasks`` action deletes tasks whatever they hold.
Faults: ``fail_next_import("after-commit" | "before-commit")`` makes the next task import fail with an unknown
outcome after (or without) committing it, as a proxy's 502 does; ``"held"`` fails it (a proxy's 504) while the
server is still importing: the tasks appear when the test calls ``land_held_import()``; ``"refused"`` answers
400 (nothing imported).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from curation.errors import LabelStudioError
from curation.labelstudio.client import UNCERTAINTY_SAMPLING, ImportOutcomeUnknown
from curation.labelstudio.formats import ls_time, parse_ls_time


def parse_label_config(config: str) -> dict[str, Any]:
    """What the server stores as ``parsed_label_config``: control name → type, to_name, inputs, labels."""
    root = ET.fromstring(config)
    objects = {el.get("name"): el for el in root.iter() if el.get("value", "").startswith("$")}
    parsed: dict[str, Any] = {}
    for el in root.iter():
        to_name = el.get("toName")
        if not to_name or el.get("name") is None:
            continue
        inputs = [
            {"type": objects[n].tag, "value": objects[n].get("value", "")[1:]}
            for n in to_name.split(",")
            if n in objects
        ]
        parsed[str(el.get("name"))] = {
            "type": el.tag,
            "to_name": to_name.split(","),
            "inputs": inputs,
            "labels": [child.get("value") for child in el if child.get("value") is not None],
        }
    return parsed


class FakeLabelStudio:
    """One fake server with one user; every call is recorded in ``calls`` (method names, in order)."""

    def __init__(self, url: str = "http://ls.test") -> None:
        self.url = url
        self.user: str | None = None
        self.calls: list[str] = []
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.predictions: dict[int, dict[str, Any]] = {}
        self.storages: dict[int, list[str]] = {}
        self.s3_storages: dict[int, list[Any]] = {}
        self._ids = {"project": 0, "task": 0, "prediction": 0, "annotation": 0}
        self._now = datetime(2026, 1, 1, tzinfo=UTC)
        self.frozen = False
        self._fault: str | None = None
        self._held: tuple[int, list[dict[str, Any]]] | None = None

    # -- test controls -----------------------------------------------------------------------------------------------
    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def _tick(self) -> str:
        if not self.frozen:
            self._now += timedelta(milliseconds=1)
        return ls_time(self._now)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def fail_next_import(self, mode: str) -> None:
        assert mode in ("after-commit", "before-commit", "held", "refused")
        self._fault = mode

    def land_held_import(self) -> list[int]:
        """The slow import held by ``fail_next_import("held")`` commits now."""
        assert self._held is not None, "no import is held"
        (project_id, tasks), self._held = self._held, None
        return [self._add_task(project_id, t) for t in tasks]

    def annotate(self, task_id: int, result: list[dict[str, Any]], *, cancelled: bool = False) -> int:
        task = self.tasks[task_id]
        at = self._tick()
        annotation = {
            "id": self._next("annotation"),
            "result": result,
            "was_cancelled": cancelled,
            "completed_by": {"id": 7, "email": "annotator@example.com"},
            "lead_time": 2.5,
            "created_at": at,
            "updated_at": at,
        }
        task["annotations"].append(annotation)
        task["updated_at"] = at
        return int(annotation["id"])

    def delete_task(self, task_id: int) -> None:
        task = self.tasks.pop(task_id)
        self.projects[task["project"]]["task_number"] -= 1
        for pid in [p for p, pred in self.predictions.items() if pred["task"] == task_id]:
            del self.predictions[pid]

    def add_task(self, project_id: int, data: dict[str, Any]) -> int:
        """A task made outside curate (by a user's import)."""
        return self._add_task(project_id, {"data": data, "predictions": []})

    def next_task(self, project_id: int) -> int | None:
        """The task the label stream serves a fresh annotator (None: no ranking applies, it would be random)."""
        project = self.projects[project_id]
        if project["sampling"] != UNCERTAINTY_SAMPLING or not project["model_version"]:
            return None
        candidates = [
            (pred["score"], pred["task"])
            for pred in self.predictions.values()
            if pred["model_version"] == project["model_version"]
            and pred["score"] is not None
            and pred["task"] in self.tasks
            and self.tasks[pred["task"]]["project"] == project_id
            and not self.tasks[pred["task"]]["annotations"]
        ]
        return min(candidates)[1] if candidates else None

    def project_tasks(self, project_id: int) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if t["project"] == project_id]

    def project_predictions(self, project_id: int, tag: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in self.predictions.values()
            if self.tasks[p["task"]]["project"] == project_id and (tag is None or p["model_version"] == tag)
        ]

    # -- LabelStudioAPI ----------------------------------------------------------------------------------------------
    def whoami(self) -> str:
        self.calls.append("whoami")
        self.user = "owner@example.com"
        return self.user

    def project(self, project_id: int) -> dict[str, Any]:
        self.calls.append("project")
        if project_id not in self.projects:
            raise LabelStudioError(f"Label Studio at {self.url} answered 404 while reading project", 404)
        return copy.deepcopy(self.projects[project_id])

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        self.calls.append("projects_titled")
        return [
            {"id": p["id"], "title": p["title"]} for p in self.projects.values() if title.lower() in p["title"].lower()
        ]

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        self.calls.append("create_project")
        if len(title) < 3:
            raise LabelStudioError(f"Label Studio at {self.url} answered 400 while creating project", 400)
        pid = self._next("project")
        self.projects[pid] = {
            "id": pid,
            "title": title,
            "description": description,
            "label_config": label_config,
            "parsed_label_config": parse_label_config(label_config),
            "model_version": "",
            "sampling": "Sequential sampling",
            "task_number": 0,
        }
        return copy.deepcopy(self.projects[pid])

    def local_storage_paths(self, project_id: int) -> list[str]:
        self.calls.append("local_storage_paths")
        return list(self.storages.get(project_id, []))

    def add_local_storage(self, project_id: int, path: str) -> None:
        self.calls.append("add_local_storage")
        self.storages.setdefault(project_id, []).append(path)

    def s3_storage_buckets(self, project_id: int) -> list[tuple[str, str]]:
        self.calls.append("s3_storage_buckets")
        return [(s.bucket, s.prefix) for s in self.s3_storages.get(project_id, [])]

    def add_s3_storage(self, project_id: int, storage: Any) -> None:
        self.calls.append("add_s3_storage")
        self.s3_storages.setdefault(project_id, []).append(storage)

    def set_ranking(self, project_id: int, tag: str) -> None:
        self.calls.append("set_ranking")
        self.projects[project_id].update(model_version=tag, sampling=UNCERTAINTY_SAMPLING)

    def _add_prediction(self, task_id: int, pred: dict[str, Any]) -> None:
        score = pred.get("score")
        pid = self._next("prediction")
        self.predictions[pid] = {
            "id": pid,
            "task": task_id,
            "model_version": pred.get("model_version"),
            "score": score if score is not None and 0.0 <= float(score) <= 1.0 else None,
            "result": copy.deepcopy(pred.get("result") or []),
            "cluster": None,  # bulk and inline imports ignore it
        }

    def _add_task(self, project_id: int, task: dict[str, Any]) -> int:
        tid = self._next("task")
        self.tasks[tid] = {
            "id": tid,
            "project": project_id,
            "data": copy.deepcopy(task["data"]),
            "updated_at": self._tick(),
            "annotations": [],
        }
        for pred in task.get("predictions") or []:
            self._add_prediction(tid, pred)
        self.projects[project_id]["task_number"] += 1
        return tid

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        self.calls.append("import_tasks")
        fault, self._fault = self._fault, None
        if fault == "before-commit":
            raise ImportOutcomeUnknown(f"Label Studio at {self.url} answered 502 while importing tasks", 502)
        if fault == "refused":
            raise LabelStudioError(f"Label Studio at {self.url} answered 400 while importing tasks", 400)
        if fault == "held":
            self._held = (project_id, copy.deepcopy(list(tasks)))
            raise ImportOutcomeUnknown(f"Label Studio at {self.url} answered 504 while importing tasks", 504)
        ids = [self._add_task(project_id, t) for t in tasks]
        if fault == "after-commit":
            raise ImportOutcomeUnknown(f"Label Studio at {self.url} answered 502 while importing tasks", 502)
        return ids

    def task_page(
        self, project_id: int, query: dict[str, Any], *, include: str, fields: str, page: int, page_size: int
    ) -> list[dict[str, Any]]:
        self.calls.append("task_page")
        filters = query.get("filters") or {}
        items = filters.get("items") or []
        test = any if filters.get("conjunction") == "or" else all
        found = [t for t in self.project_tasks(project_id) if not items or test(_matches(t, f) for f in items)]
        (ordering,) = query.get("ordering") or ["tasks:id"]
        key = ordering.removeprefix("tasks:")
        found.sort(key=lambda t: (parse_ls_time(t[key]) if key == "updated_at" else t[key], t["id"]))
        part = found[(page - 1) * page_size : page * page_size]
        keep = set(include.split(",")) | {"id"}
        out = []
        for task in part:
            row = {k: copy.deepcopy(v) for k, v in task.items() if k in keep and k != "annotations"}
            done = [a for a in task["annotations"] if not a.get("was_cancelled")]
            if "total_annotations" in keep:
                row["total_annotations"] = len(done)
            if "cancelled_annotations" in keep:
                row["cancelled_annotations"] = len(task["annotations"]) - len(done)
            if fields == "all" and "annotations" in keep:
                row["annotations"] = copy.deepcopy(task["annotations"])
            out.append(row)
        return out

    def delete_tasks(self, project_id: int, task_ids: Sequence[int]) -> None:
        self.calls.append("delete_tasks")
        for tid in task_ids:
            if self.tasks.get(tid, {}).get("project") == project_id:
                self.delete_task(tid)

    def import_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> None:
        self.calls.append("import_predictions")
        unknown = [p["task"] for p in predictions if self.tasks.get(p["task"], {}).get("project") != project_id]
        if unknown:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered 400 while writing predictions: tasks {unknown} not found", 400
            )
        for pred in predictions:
            self._add_prediction(int(pred["task"]), pred)

    def model_versions(self, project_id: int) -> dict[str, int]:
        self.calls.append("model_versions")
        counts: dict[str, int] = {}
        for pred in self.project_predictions(project_id):
            counts[pred["model_version"]] = counts.get(pred["model_version"], 0) + 1
        return counts

    def delete_model_version(self, project_id: int, tag: str, count: int = 0) -> int:
        self.calls.append("delete_model_version")
        gone = [p["id"] for p in self.project_predictions(project_id, tag)]
        for pid in gone:
            del self.predictions[pid]
        return len(gone)

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        self.calls.append("task_predictions")
        return [copy.deepcopy(p) for p in self.predictions.values() if p["task"] == task_id]

    def set_cluster(self, prediction_id: int, cluster: int) -> None:
        self.calls.append("set_cluster")
        if prediction_id not in self.predictions:
            raise LabelStudioError(f"Label Studio at {self.url} answered 404 while setting a cluster", 404)
        self.predictions[prediction_id]["cluster"] = int(cluster)


def _matches(task: dict[str, Any], item: dict[str, Any]) -> bool:
    name = str(item["filter"]).removeprefix("filter:tasks:")
    operator, value = item["operator"], item.get("value")
    if name.startswith("data."):
        actual = task["data"].get(name[len("data.") :])
        if operator == "equal":
            return actual is not None and str(actual) == str(value)
        if operator == "not_empty":
            return actual not in (None, "")
    if name == "id" and operator in ("greater", "equal"):
        return task["id"] > int(value) if operator == "greater" else task["id"] == int(value)
    if name == "updated_at" and operator == "greater_or_equal":
        at, since = parse_ls_time(task["updated_at"]), parse_ls_time(str(value))
        return at is not None and since is not None and at >= since
    raise NotImplementedError(f"the fake has no filter {item}")
