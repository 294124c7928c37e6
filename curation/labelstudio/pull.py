"""``pull``: bring finished annotations (and skips) of the project's tasks into the store, incrementally.

Each page of updated tasks is committed with the new watermark, so a killed pull resumes and a rerun stores
nothing twice. Tasks with a ``curation_id`` this database did not push (pushed from another database) are
adopted; tasks without one are someone else's and only counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.formats import curation_id_of, normalize_annotation, parse_ls_time, unchanged_prediction
from curation.labelstudio.project import ProjectHandle, known_project
from curation.labelstudio.tasks import FILTER_CHUNK, PULL_INCLUDE, _id_filter, _query, updated_tasks
from curation.progress import NullProgress, Progress
from curation.reports import Report
from store import Store
from store.records import PulledAnnotation

WATERMARK_MARGIN_S = 1.0


@dataclass
class PullReport(Report):
    project_id: int
    project: str
    tasks_seen: int = 0
    new_annotations: int = 0
    labeled_tasks: int = 0  # tasks newly labeled by this pull (re-read ones are not counted again)
    skipped_tasks: int = 0  # tasks newly skipped
    deleted_annotations: int = 0  # annotations deleted in Label Studio: no longer labels here, never trained on
    unchanged_predictions: int = 0  # new labels that are the model's pre-annotation submitted unchanged
    foreign_tasks: int = 0
    watermark: str | None = None


def watermark_with_margin(value: str | None, margin_s: float = WATERMARK_MARGIN_S) -> datetime | None:
    """Pull again from a little before the last watermark: tasks updated in the same instant are not missed,
    and re-reading a few annotations is harmless (they are upserted)."""
    parsed = parse_ls_time(value)
    return None if parsed is None else parsed - timedelta(seconds=margin_s)


def pull(
    store: Store,
    ls: LabelStudioAPI,
    project_name: str | None,
    *,
    page_size: int = 100,
    progress: Progress | None = None,
) -> PullReport:
    """Fetch annotations of the project's tasks updated since the last pull (the project must be one this
    database pushed to)."""
    progress = progress or NullProgress()
    project = known_project(store, ls, project_name)
    report = PullReport(project.record.project_id, project.record.title)
    since = watermark_with_margin(project.record.pulled_until)
    progress.start(f"pulling annotations from {project.record.title}", None)
    try:
        for page in updated_tasks(ls, project.record.project_id, since, page_size):
            _store_page(store, project, page, report)
            progress.advance(len(page))
    finally:
        progress.finish()
    return report


def pull_tasks(store: Store, ls: LabelStudioAPI, project: ProjectHandle, task_ids: list[int]) -> PullReport:
    """Bring in the annotations of the given tasks now, whatever the watermark (tasks an ``ls://`` scan just
    linked, labeled before curate knew them). The watermark is left where it is: it belongs to ``pull``."""
    report = PullReport(project.record.project_id, project.record.title)
    for start in range(0, len(task_ids), FILTER_CHUNK):
        part = task_ids[start : start + FILTER_CHUNK]
        query = _query("or", [_id_filter("equal", int(t)) for t in part], "tasks:id")
        page = ls.task_page(
            project.record.project_id, query, include=PULL_INCLUDE, fields="all", page=1, page_size=len(part)
        )
        if page:
            _store_page(store, project, page, report, advance=False)
    return report


def _store_page(
    store: Store, project: ProjectHandle, page: list[dict[str, Any]], report: PullReport, *, advance: bool = True
) -> None:
    known = store.label_studio.items_for_tasks(project.record.id, [int(t["id"]) for t in page])
    unknown = {int(t["id"]): cid for t in page if int(t["id"]) not in known and (cid := curation_id_of(t))}
    by_content = store.items.by_content(sorted(set(unknown.values()))) if unknown else {}
    adopted = [(by_content[c], tid) for tid, c in unknown.items() if c in by_content]
    known.update({tid: item for item, tid in adopted})
    annotations: list[PulledAnnotation] = []
    seen: list[int] = []
    watermark = report.watermark
    for task in page:
        report.tasks_seen += 1
        updated = task.get("updated_at")
        if updated and (watermark is None or parse_ls_time(updated) > parse_ls_time(watermark)):  # type: ignore[operator]
            watermark = updated
        item_id = known.get(int(task["id"]))
        if item_id is None:
            report.foreign_tasks += 1
            continue
        if isinstance(task.get("annotations"), list):  # all of them: one stored but missing was deleted
            seen.append(int(task["id"]))
        done = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
        annotations.extend(_annotation(a, int(task["id"]), item_id, project.record.task, predictions) for a in done)
    counts = store.label_studio.store_annotations(
        project.record.id, annotations, adopted, watermark if advance else None, seen
    )
    report.new_annotations += counts.new_annotations
    report.labeled_tasks += counts.labeled_tasks
    report.skipped_tasks += counts.skipped_tasks
    report.deleted_annotations += counts.deleted_annotations
    report.unchanged_predictions += counts.unchanged_predictions
    report.watermark = watermark


def _annotation(
    a: dict[str, Any], task_id: int, item_id: int, task_type: str, predictions: list[dict[str, Any]]
) -> PulledAnnotation:
    return PulledAnnotation(
        annotation_id=int(a["id"]),
        task_id=task_id,
        item_id=item_id,
        was_cancelled=bool(a.get("was_cancelled")),
        annotator=_annotator(a.get("completed_by")),
        lead_time=float(a["lead_time"]) if a.get("lead_time") is not None else None,
        labels=normalize_annotation(task_type, a.get("result") or []),
        result=a.get("result") or [],
        created_at=parse_ls_time(a.get("created_at")),
        updated_at=parse_ls_time(a.get("updated_at")),
        ground_truth=bool(a.get("ground_truth")),
        unchanged_prediction=unchanged_prediction(task_type, a, predictions),
    )


def _annotator(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("id"))
    return None if value is None else str(value)
