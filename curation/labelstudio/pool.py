"""``ls://<project title or id>``: an existing Label Studio project's tasks as a pool.

The tasks may come from cloud-storage sync, a person's import, another tool. A scan lists every task
(keyset-paged on the id, ids/data/annotation counts only), reads the image of each task whose reference it has
not seen (``images.pool_task_image`` decides where from; a foreign host is refused, never fetched), registers it
as an item of the pool (path = the task's image reference; content id = SHA-256 of the bytes) and **links the
task to the item** in curate's task table — no task is ever created, and the task's data is never rewritten
except to mark a task drawn into the test set (``mark_test_tasks``: the ``curate_set`` field added). From
then on the task is an ordinary queued task for ``push``/``reprioritize``/``pull``/``loop``: ranking writes
predictions to it under a fresh model_version. A task that already has annotations has them pulled at once, so
it counts as labeled (never selected, used for training).

Tasks curate pushed from this database (a ``curation_id`` it knows) are left to their own pool.

Rescans: a new task is read and linked; a task deleted in Label Studio leaves the queue (``mark_deleted``) and its
path is forgotten once no listed task references it. A reference is taken as immutable (the same reference is
not read again); two tasks with the same image share one item, and only the first one is linked (reported).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from curation.errors import LabelStudioError, PoolError, ProjectNotFoundError
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.formats import CONTROL_TAG, TEST_SET_FIELD, TEST_SET_VALUE, curation_id_of
from curation.labelstudio.images import pool_task_image
from curation.labelstudio.project import find_project
from curation.labelstudio.tasks import SWEEP_INCLUDE, _annotation_count, _id_filter, _query
from curation.objects.http import HttpFetcher
from curation.objects.source import ObjectReadError, ReadsOneByMany
from curation.scoring.images import DEFAULT_MAX_PIXELS
from curation.scoring.pool import LabelStudioPool, ScanReport
from store import Store
from store.records import ScannedFile

LIST_PAGE = 500


def interface_of(parsed: dict[str, Any]) -> tuple[str, str]:
    """(task type, the data key of its image) from a project's parsed labeling config."""
    by_tag = {tag: task for task, tag in CONTROL_TAG.items()}
    for control in (parsed or {}).values():
        task = by_tag.get(str(control.get("type")))
        if task is None:
            continue
        for source in control.get("inputs") or []:
            if str(source.get("type", "")).lower() == "image" and source.get("value"):
                return task, str(source["value"]).lstrip("$")
    raise PoolError(
        "the project's labeling config has no image with Choices, RectangleLabels or PolygonLabels: "
        "curate cannot rank it"
    )


@dataclass
class TaskImages(ReadsOneByMany):
    """Reads tasks' images by reference (implements ``read_many`` of the object-source protocol): through the
    Label Studio server with the API key, s3:// through the project's storage (Label Studio's resolve endpoint)
    or curate's own S3 credentials, http(s) only from allowed hosts."""

    ls: LabelStudioAPI
    http: HttpFetcher
    s3_direct: Any = None  # a UriReader when pool.label_studio_s3 is "direct"
    tasks: dict[str, int] = field(default_factory=dict)  # reference → the task it was seen in (for resolve)
    project_id: int | None = None  # resolves s3:// references no task of this scan was seen with
    bucket: str = ""

    def read_many(self, keys: Sequence[str]) -> list[bytes | ObjectReadError]:
        if not keys:
            return []
        with ThreadPoolExecutor(min(self.http.max_concurrency, len(keys))) as pool:
            return list(pool.map(self._one, keys))

    def _one(self, ref: str) -> bytes | ObjectReadError:
        image = pool_task_image(ref, ls_url=self.ls.url, allowed_hosts=self.http.allowed_hosts)
        if image.kind == "refused" or image.url is None:
            return ObjectReadError(image.reason or "refused", transient=False)
        if image.kind == "http":
            try:
                return self.http.read(image.url)
            except ObjectReadError as exc:
                return exc
        if image.kind == "s3" and self.s3_direct is not None:
            return self.s3_direct.read_many([image.url])[0]
        path = image.url
        if image.kind == "s3":
            task_id = self.tasks.get(ref)
            encoded = base64.urlsafe_b64encode(image.url.encode()).decode()
            if task_id is not None:
                path = f"/tasks/{task_id}/resolve/?fileuri={encoded}"
            elif self.project_id is not None:
                path = f"/projects/{self.project_id}/resolve/?fileuri={encoded}"
            else:
                return ObjectReadError("no task of the project references this image any more", transient=True)
        try:
            return self.ls.download(path, self.http.max_bytes)
        except LabelStudioError as exc:
            status = exc.status or 0
            transient = status == 0 or status >= 500 or status in (404, 408, 429)
            return ObjectReadError(f"Label Studio could not serve the image: {exc}", transient=transient)


@dataclass
class LinkReport:
    ls_project_id: int
    project_id: int
    title: str
    linked: int = 0
    deleted: int = 0
    duplicate_tasks: list[int] = field(default_factory=list)
    annotated_new: list[int] = field(default_factory=list)  # newly linked tasks that already have annotations


def list_tasks(ls: LabelStudioAPI, project_id: int, page_size: int = LIST_PAGE) -> Any:
    """Pages of every task of the project (id, data, annotation counts), keyset-paged on the id."""
    after = 0
    while True:
        query = _query("and", [_id_filter("greater", after)], "tasks:id")
        tasks = ls.task_page(project_id, query, include=SWEEP_INCLUDE, fields="task_only", page=1, page_size=page_size)
        if tasks:
            yield tasks
        if len(tasks) < page_size:
            return
        newest = max(int(t["id"]) for t in tasks)
        if newest <= after:
            raise LabelStudioError(f"Label Studio at {ls.url} ignored the task id filter while listing tasks")
        after = newest


def scan_ls_pool(
    store: Store,
    pool: LabelStudioPool,
    ls: LabelStudioAPI,
    images: TaskImages,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, ScanReport, LinkReport]:
    """List the project's tasks, register their images and link each task to its item (module docstring)."""
    from curation.scoring.pool import scanned_bytes

    remote = find_project(ls, pool.project)
    if remote is None:
        raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {pool.project!r} (--pool {pool.location})")
    pid = int(remote["id"])
    task_type, data_key = interface_of(remote.get("parsed_label_config") or {})
    record = store.label_studio.project(ls.url, pid, str(remote.get("title") or pool.project), task_type)
    links = LinkReport(record.id, pid, record.title)
    report = ScanReport()
    pool_id = store.pools.get_or_create(pool.location, pool.kind, pool.root)
    recorded = store.label_studio.recorded(record.id)
    linked_tasks = {r.task_id for r in recorded.values()}
    alive = {r.task_id for r in recorded.values() if r.status != "deleted"}
    mark = time.time_ns()
    listed_ids: set[int] = set()
    listed = 0
    for page in list_tasks(ls, pid):
        refs: dict[str, int] = {}
        counts: dict[int, int] = {}
        # tasks curate pushed (from this database) are linked already, through their own pool: not read again
        ours = store.items.by_content(sorted({c for t in page if (c := curation_id_of(t))}))
        for task in page:
            tid = int(task["id"])
            listed_ids.add(tid)
            if curation_id_of(task) in ours:
                continue
            counts[tid] = _annotation_count(task)
            ref = (task.get("data") or {}).get(data_key)
            image = pool_task_image(ref, ls_url=ls.url, allowed_hosts=images.http.allowed_hosts)
            if image.kind == "refused" or not isinstance(ref, str):
                report.skipped.append((f"task {tid}", f"{image.reason}: not fetched"))
                continue
            ref = ref.strip()
            if ref in refs or (ref in images.tasks and images.tasks[ref] != tid):
                links.duplicate_tasks.append(tid)
                continue
            refs[ref] = tid
            images.tasks[ref] = tid
        paths = list(refs)
        known = store.pools.known_among(pool_id, paths)
        unchanged = [p for p in paths if p in known]
        to_read = [p for p in paths if p not in known]
        changed: list[ScannedFile] = []
        for path, result in zip(to_read, images.read_many(to_read), strict=True):
            if isinstance(result, ObjectReadError):
                note = " (tried again next run)" if result.transient else ""
                report.skipped.append((f"task {refs[path]} ({path})", f"{result}{note}"))
                continue
            changed.append(scanned_bytes(path, len(result), 0, None, result, max_pixels))
        store.pools.mark_seen(pool_id, unchanged, mark)
        if changed:
            new_items, _ = store.pools.apply_scan(pool_id, changed, (), mark=mark)
            report.new_items += new_items
        report.hashed += len(changed)
        report.files += len(unchanged) + len(changed)
        items = store.pools.known_among(pool_id, paths)
        new_links = [(items[p].item_id, refs[p]) for p in paths if p in items and refs[p] not in linked_tasks]
        rows = [
            {"item_id": item, "task_id": tid, "position": None, "cluster": None, "selection_id": None}
            for item, tid in new_links
        ]
        links.linked += store.label_studio.record_tasks(record.id, rows)
        now = store.label_studio.items_for_tasks(record.id, [tid for _, tid in new_links])
        for _, tid in new_links:
            if tid not in now:  # its image is the item of another task already: that one stays linked
                links.duplicate_tasks.append(tid)
            elif counts.get(tid, 0):
                links.annotated_new.append(tid)
        linked_tasks |= set(now)
        alive |= set(now)
        listed += len(page)
        if on_progress is not None:
            on_progress(listed, 0)
    report.removed = store.pools.sweep(pool_id, mark)
    report.duplicate_paths = store.pools.duplicate_paths(pool_id)
    gone = sorted(t for t in alive if t not in listed_ids)
    if gone:
        links.deleted = store.label_studio.mark_deleted(record.id, gone)
    return pool_id, report, links


def mark_test_tasks(ls: LabelStudioAPI, task_ids: Sequence[int]) -> int:
    """Mark existing tasks as test-set tasks, as pushed test tasks are: ``curate_set: "test"`` in their ``meta``
    and their ``data`` (the Data Manager column). Each task is read first and written back whole with the field
    added (Label Studio replaces ``data`` on PATCH), so its image reference is kept; a task marked already is left
    alone (a rerun after a crash). How many tasks were written."""
    written = 0
    for tid in task_ids:
        task = ls.task(int(tid))
        data, meta = dict(task.get("data") or {}), dict(task.get("meta") or {})
        if data.get(TEST_SET_FIELD) == TEST_SET_VALUE and meta.get(TEST_SET_FIELD) == TEST_SET_VALUE:
            continue
        data[TEST_SET_FIELD] = meta[TEST_SET_FIELD] = TEST_SET_VALUE
        ls.update_task(int(tid), data=data, meta=meta)
        written += 1
    return written


def task_images(ls: LabelStudioAPI, pool_settings: Any, *, project_id: int | None = None) -> TaskImages:
    """The reader for ``pool.*``: downloads bounded by ``pool.http.max_bytes``; ``s3://`` images through Label
    Studio unless ``pool.label_studio_s3`` is ``direct``."""
    from curation.objects.http import http_fetcher
    from curation.objects.uris import uri_reader

    direct = uri_reader(pool_settings) if pool_settings.label_studio_s3 == "direct" else None
    return TaskImages(ls, http_fetcher(pool_settings.http), direct, project_id=project_id)
