"""Finding tasks in a project: by ``curation_id``, every curate task, every task id, and the tasks updated since a
time. Built on ``LabelStudioAPI.task_page``; the queries are Label Studio's Data Manager filters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from curation.errors import LabelStudioError
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.formats import curation_id_of, group_by_curation_id, ls_time, parse_ls_time

FILTER_CHUNK = 40  # curation ids per reconciliation query (each is one OR-ed filter in the query string)
SWEEP_PAGE = 1000  # tasks per request of the reconciliation sweep
SWEEP_INCLUDE = "id,data,total_annotations,cancelled_annotations"
PULL_INCLUDE = (
    "id,data,updated_at,annotations,id,result,was_cancelled,completed_by,lead_time,created_at,ground_truth,"
    "parent_prediction,predictions"
)


def _query(conjunction: str, items: list[dict[str, Any]], ordering: str) -> dict[str, Any]:
    return {"filters": {"conjunction": conjunction, "items": items}, "ordering": [ordering]}


def _curation_id_filter(operator: str, value: str) -> dict[str, Any]:
    return {"filter": "filter:tasks:data.curation_id", "operator": operator, "type": "String", "value": value}


def pages(
    ls: LabelStudioAPI, project_id: int, query: dict[str, Any], *, include: str, page_size: int = 100
) -> Iterator[dict[str, Any]]:
    """Every task matching ``query``, by page number (for filters whose result does not change meanwhile)."""
    page = 1
    while True:
        tasks = ls.task_page(project_id, query, include=include, fields="task_only", page=page, page_size=page_size)
        yield from tasks
        if len(tasks) < page_size:
            return
        page += 1


def tasks_by_curation_id(ls: LabelStudioAPI, project_id: int, content_ids: Sequence[str]) -> dict[str, list[int]]:
    """curation_id → task ids found in the project (more than one means duplicates made outside curate)."""
    found: dict[str, list[int]] = {}
    for start in range(0, len(content_ids), FILTER_CHUNK):
        part = content_ids[start : start + FILTER_CHUNK]
        query = _query("or", [_curation_id_filter("equal", c) for c in part], "tasks:id")
        for cid, ids in group_by_curation_id(pages(ls, project_id, query, include="id,data")).items():
            found.setdefault(cid, []).extend(ids)
    return found


@dataclass(frozen=True)
class RemoteTask:
    """A curate task as the sweep sees it: enough to adopt it, or to tell a duplicate that may be deleted."""

    id: int
    curation_id: str
    annotations: int
    """Finished and skipped annotations: a task with any is never deleted."""


def _id_filter(operator: str, value: int) -> dict[str, Any]:
    return {"filter": "filter:tasks:id", "operator": operator, "type": "Number", "value": value}


def _annotation_count(task: dict[str, Any]) -> int:
    """Finished + skipped annotations; a server that does not report them counts as annotated (never deleted)."""
    if "total_annotations" not in task or "cancelled_annotations" not in task:
        return 1
    return int(task["total_annotations"] or 0) + int(task["cancelled_annotations"] or 0)


def curate_tasks(ls: LabelStudioAPI, project_id: int, page_size: int = SWEEP_PAGE) -> dict[str, list[RemoteTask]]:
    """Every task of the project that carries a curation_id, oldest first per curation_id: the sweep behind
    every reconciliation. Keyset-paged on the task id (each request: the first page of ids above the last one
    seen), so tasks created or deleted meanwhile never shift a page; only ids, data and annotation counts."""
    found: dict[str, list[RemoteTask]] = {}
    after = 0
    while True:
        query = _query("and", [_curation_id_filter("not_empty", ""), _id_filter("greater", after)], "tasks:id")
        tasks = ls.task_page(project_id, query, include=SWEEP_INCLUDE, fields="task_only", page=1, page_size=page_size)
        for task in tasks:
            cid = curation_id_of(task)
            if cid:
                found.setdefault(cid, []).append(RemoteTask(int(task["id"]), cid, _annotation_count(task)))
        if len(tasks) < page_size:
            break
        newest = max(int(t["id"]) for t in tasks)
        if newest <= after:
            raise LabelStudioError(f"Label Studio at {ls.url} ignored the task id filter while listing tasks")
        after = newest
    for tasks_of in found.values():
        tasks_of.sort(key=lambda t: t.id)
    return found


def annotation_counts(ls: LabelStudioAPI, project_id: int, ids: Sequence[int]) -> dict[int, int]:
    """task id → its annotations now, for the given tasks that still exist (checked just before deleting)."""
    out: dict[int, int] = {}
    for start in range(0, len(ids), FILTER_CHUNK):
        part = ids[start : start + FILTER_CHUNK]
        query = _query("or", [_id_filter("equal", int(i)) for i in part], "tasks:id")
        for task in pages(ls, project_id, query, include=SWEEP_INCLUDE):
            out[int(task["id"])] = _annotation_count(task)
    return out


def task_ids(ls: LabelStudioAPI, project_id: int) -> set[int]:
    """Every task id of the project (a sweep; used to find tasks deleted in Label Studio)."""
    query = _query("and", [], "tasks:id")
    return {int(task["id"]) for task in pages(ls, project_id, query, include="id", page_size=1000)}


def updated_tasks(
    ls: LabelStudioAPI, project_id: int, since: datetime | None, page_size: int = 100
) -> Iterator[list[dict[str, Any]]]:
    """Pages of tasks updated at or after ``since`` (oldest first), with their annotations.

    Keyset paging on ``updated_at``: each request asks for the first page of tasks updated at or after the
    newest time seen so far. Page numbers would skip tasks whenever a labeler updates a task mid-pull (it
    moves to the end and every later task shifts one page up).
    """
    cursor = since
    seen: set[int] = set()  # ids already yielded whose updated_at equals the cursor
    size = page_size
    while True:
        items = []
        if cursor is not None:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater_or_equal",
                    "type": "Datetime",
                    "value": ls_time(cursor),
                }
            )
        query = _query("and", items, "tasks:updated_at")
        tasks = ls.task_page(project_id, query, include=PULL_INCLUDE, fields="all", page=1, page_size=size)
        times = [parse_ls_time(t.get("updated_at")) for t in tasks]
        fresh = [t for t, at in zip(tasks, times, strict=True) if not (at == cursor and int(t["id"]) in seen)]
        if fresh:
            yield fresh
        if len(tasks) < size:
            return
        newest = max((at for at in times if at is not None), default=None)
        if newest is None:
            raise LabelStudioError(f"Label Studio at {ls.url} returned tasks without updated_at")
        if newest == cursor:
            # a full page of tasks updated at the very same instant: widen the page until it moves on
            seen.update(int(t["id"]) for t in tasks)
            size *= 2
            continue
        cursor, size = newest, page_size
        seen = {int(t["id"]) for t, at in zip(tasks, times, strict=True) if at == newest}
