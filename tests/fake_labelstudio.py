"""An in-memory Label Studio implementing ``LabelStudioAPI``, for fast tests of curate's queue logic.

It follows the real server's behaviour as checked in /work/shared/NOTES.md and by tests/test_labelstudio.py:
- the label stream (``next_task``) serves, under "Uncertainty sampling", the unlabeled task whose prediction
  tagged with the project's ``model_version`` has the lowest score (otherwise: no ranking, "random"), as
  ``projects/functions/next_task.py`` of label-studio 1.23.2 does for a user: first the task that user holds a
  lock on; then, among tasks the user has not annotated (or skipped) and nobody else holds a lock on, ordered by
  how many tasks of the same ``cluster`` the user has solved, then by score; a served task is locked to the
  user (Label Studio's ``TASK_LOCK_TTL``, 24 h by default) until they submit; skipped tasks follow the project's
  ``skip_queue`` (requeued for others, for the skipper at the end, or done);
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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from curation.errors import LabelStudioError
from curation.labelstudio.client import UNCERTAINTY_SAMPLING, ImportOutcomeUnknown
from curation.labelstudio.formats import ls_time, parse_ls_time


def server_parse(label_config: str) -> dict[str, Any]:
    """A labeling config parsed as Label Studio 1.23 stores it (``parsed_label_config``): the SDK's
    ``parse_config``, the very function the server calls — not curate's own parser (``formats.parse_label_config``,
    used for the configs Label Studio sends to ``curate serve``), so that tests on the fake check curate's reading
    of the config against the server's parse rather than against itself."""
    from label_studio_sdk._extensions.label_studio_tools.core.label_config import parse_config

    return dict(parse_config(label_config))


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
        self.backends: dict[int, dict[str, Any]] = {}
        self.webhooks_by_id: dict[int, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # path → bytes served (uploads)
        self.s3_storages: dict[int, list[Any]] = {}
        self._ids = {"project": 0, "task": 0, "prediction": 0, "annotation": 0, "backend": 0, "webhook": 0}
        self._now = datetime(2026, 1, 1, tzinfo=UTC)
        self.frozen = False
        self._fault: str | None = None
        self._held: tuple[int, list[dict[str, Any]]] | None = None
        self.locks: dict[tuple[int, int], datetime] = {}  # (task id, user) → expiry
        self.lock_ttl_s = 86400.0  # Label Studio's TASK_LOCK_TTL default

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

    def annotate(
        self,
        task_id: int,
        result: list[dict[str, Any]],
        *,
        cancelled: bool = False,
        user: int = 7,
        parent_prediction: int | None = None,
    ) -> int:
        """``user`` submits (or, ``cancelled``, skips) the task; their lock on it is released. ``parent_prediction``:
        the prediction the labeling UI pre-filled the annotation from."""
        task = self.tasks[task_id]
        at = self._tick()
        self.locks.pop((task_id, user), None)
        annotation = {
            "id": self._next("annotation"),
            "result": result,
            "parent_prediction": parent_prediction,
            "was_cancelled": cancelled,
            "completed_by": {"id": user, "email": f"annotator{user}@example.com"},
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

    def delete_annotation(self, task_id: int, annotation_id: int) -> None:
        """Someone deletes an annotation in Label Studio (the task's ``updated_at`` moves)."""
        task = self.tasks[task_id]
        task["annotations"] = [a for a in task["annotations"] if a["id"] != annotation_id]
        task["updated_at"] = self._tick()

    def _by(self, task: dict[str, Any], user: int) -> list[dict[str, Any]]:
        return [a for a in task["annotations"] if (a.get("completed_by") or {}).get("id") == user]

    def _is_labeled(self, task: dict[str, Any]) -> bool:
        ignore = self.projects[task["project"]].get("skip_queue") == "IGNORE_SKIPPED"
        return any(ignore or not a.get("was_cancelled") for a in task["annotations"])

    def _live_prediction(self, task_id: int, tag: str) -> dict[str, Any] | None:
        found = [p for p in self.predictions.values() if p["task"] == task_id and p["model_version"] == tag]
        return found[0] if found else None

    def next_task(self, project_id: int, user: int | None = None) -> int | None:
        """The task the label stream serves ``user`` (None: a fresh annotator who takes no lock; the result None:
        no ranking applies, it would be random). A served task is locked to ``user`` until they annotate it."""
        project = self.projects[project_id]
        if project["sampling"] != UNCERTAINTY_SAMPLING or not project["model_version"]:
            return None
        tag = project["model_version"]
        now = self._now
        locks = {k: v for k, v in self.locks.items() if v > now}
        tasks = self.project_tasks(project_id)
        solved = [t for t in tasks if user is not None and self._by(t, user)]
        open_ = [t for t in tasks if t not in solved and not self._is_labeled(t)]
        if user is not None:
            mine = [t["id"] for t in open_ if (t["id"], user) in locks]
            if mine:
                return min(mine)
        free = [t for t in open_ if not any(tid == t["id"] and u != user for tid, u in locks)]
        solved_clusters: dict[Any, int] = {}
        for t in solved:
            clusters = [p["cluster"] for p in self.predictions.values() if p["task"] == t["id"]]
            key = max((c for c in clusters if c is not None), default=None)
            solved_clusters[key] = solved_clusters.get(key, 0) + 1
        ranked = []
        for t in free:
            pred = self._live_prediction(t["id"], tag)
            if pred is None or pred["score"] is None:
                continue
            ranked.append((solved_clusters.get(pred["cluster"], 0) if solved_clusters else 0, pred["score"], t["id"]))
        chosen = min(ranked)[2] if ranked else None
        if chosen is None and user is not None and project.get("skip_queue") == "REQUEUE_FOR_ME":
            skipped = [
                t["id"]
                for t in solved
                if not self._is_labeled(t) and all(a["was_cancelled"] for a in self._by(t, user))
            ]
            chosen = skipped[0] if skipped else None
        if chosen is not None and user is not None:
            self.locks[(chosen, user)] = now + timedelta(seconds=self.lock_ttl_s)
        return chosen

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

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self.calls.append("set_label_config")
        project = self.projects[project_id]
        project["label_config"] = label_config
        project["parsed_label_config"] = server_parse(label_config)

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
            "parsed_label_config": server_parse(label_config),
            "model_version": "",
            "sampling": "Sequential sampling",
            "skip_queue": "REQUEUE_FOR_OTHERS",
            "show_collab_predictions": True,
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

    def set_prelabeling(self, project_id: int, on: bool) -> None:
        self.calls.append("set_prelabeling")
        self.projects[project_id]["show_collab_predictions"] = on
        if not on:
            self.projects[project_id]["model_version"] = ""  # as the server's project serializer does

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
            "meta": copy.deepcopy(task.get("meta") or {}),
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
            if fields == "all" and "predictions" in keep:
                row["predictions"] = [copy.deepcopy(p) for p in self.predictions.values() if p["task"] == task["id"]]
            out.append(row)
        return out

    def delete_tasks(self, project_id: int, task_ids: Sequence[int]) -> None:
        self.calls.append("delete_tasks")
        for tid in task_ids:
            if self.tasks.get(tid, {}).get("project") == project_id:
                self.delete_task(tid)

    def task(self, task_id: int) -> dict[str, Any]:
        self.calls.append("task")
        task = self.tasks[task_id]
        return {k: copy.deepcopy(v) for k, v in task.items() if k in ("id", "project", "data", "meta", "updated_at")}

    def update_task(self, task_id: int, *, data: dict[str, Any], meta: dict[str, Any]) -> None:
        self.calls.append("update_task")
        task = self.tasks[task_id]
        task.update(data=copy.deepcopy(data), meta=copy.deepcopy(meta), updated_at=self._tick())

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
        for task in self.tasks.values():  # the server's on_delete=SET_NULL
            for annotation in task["annotations"]:
                if annotation.get("parent_prediction") in gone:
                    annotation["parent_prediction"] = None
        return len(gone)

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        self.calls.append("task_predictions")
        return [copy.deepcopy(p) for p in self.predictions.values() if p["task"] == task_id]

    # -- ML backends and webhooks: like the server, adding a backend adds a webhook for every action ------------------
    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        self.calls.append("ml_backends")
        return [copy.deepcopy(b) for b in self.backends.values() if b["project"] == project_id]

    def add_ml_backend(
        self, project_id: int, url: str, title: str, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls.append("add_ml_backend")
        backend_id = self._next("backend")
        self.backends[backend_id] = {"id": backend_id, "project": project_id, "url": url, "title": title}
        hook = url.rstrip("/") + "/webhook"
        if not any(w["url"] == hook and w["project"] == project_id for w in self.webhooks_by_id.values()):
            hook_id = self._next("webhook")
            self.webhooks_by_id[hook_id] = {
                "id": hook_id,
                "project": project_id,
                "url": hook,
                "headers": {},
                "actions": [],
                "send_for_all_actions": True,
                "is_active": True,
            }
        return copy.deepcopy(self.backends[backend_id])

    def delete_ml_backend(self, backend_id: int) -> None:
        self.calls.append("delete_ml_backend")
        self.backends.pop(backend_id, None)

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        self.calls.append("webhooks")
        return [copy.deepcopy(w) for w in self.webhooks_by_id.values() if w["project"] == project_id]

    def add_webhook(self, project_id: int, url: str, headers: dict[str, str], actions: Sequence[str]) -> dict[str, Any]:
        self.calls.append("add_webhook")
        hook_id = self._next("webhook")
        self.webhooks_by_id[hook_id] = {
            "id": hook_id,
            "project": project_id,
            "url": url,
            "headers": dict(headers),
            "actions": list(actions),
            "send_for_all_actions": False,
            "is_active": True,
        }
        return copy.deepcopy(self.webhooks_by_id[hook_id])

    def update_webhook(self, webhook_id: int, url: str, headers: dict[str, str], actions: Sequence[str]) -> None:
        self.calls.append("update_webhook")
        hook = self.webhooks_by_id[webhook_id]
        hook.update(url=url, headers=dict(headers), actions=list(actions), send_for_all_actions=False, is_active=True)

    def delete_webhook(self, webhook_id: int) -> None:
        self.calls.append("delete_webhook")
        self.webhooks_by_id.pop(webhook_id, None)

    def download(self, path: str, max_bytes: int) -> bytes:
        self.calls.append("download")
        if path not in self.files:
            raise LabelStudioError(f"Label Studio at {self.url} answered 404 while downloading {path}", 404)
        if len(self.files[path]) > max_bytes:
            raise LabelStudioError(f"{path} is larger than {max_bytes} bytes")
        return self.files[path]

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
