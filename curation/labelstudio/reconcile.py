"""Reconciling a project with this database before anything is imported: no duplicate task, ever.

Label Studio does not deduplicate, and a project cannot be locked, so every push and reprioritize first sweeps
the project's curate tasks (``tasks.curate_tasks``: keyset-paged, ids, data and annotation counts only) and
applies three rules, whatever this database believes:

1. **Duplicates are removed.** Per ``curation_id`` the task to keep is the oldest one with annotations, else the
   oldest one; the others are deleted unless they have annotations (re-checked just before deleting) — those
   stay and are reported. An item recorded here with a deleted (or vanished) duplicate is pointed at the kept one.
2. **Every curate task is adopted.** A task whose item this database knows but has not recorded in the project
   (imported by another database, by a run that never heard back) is recorded; the item is not imported again.
3. **An import whose outcome is unknown holds its items.** Its intent (5xx, timeout, killed process) stays until
   all its items are seen in the project, or until ``label_studio.import_settle_s`` has passed since it was sent
   and they are still absent — only then may they be imported again. A slow server that answers 504 and commits
   later therefore never gets the same items twice.

A push that races another database's push between the sweep and the import can still create a duplicate; the
next reconcile of either database removes it (both keep the same task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.project import ProjectHandle
from curation.labelstudio.tasks import RemoteTask, annotation_counts, curate_tasks
from curation.progress import NullProgress, Progress
from store import Store
from store.records import PushIntent, RecordedTask


@dataclass(frozen=True)
class DuplicatePlan:
    keep: dict[str, int]
    """curation_id → the task to keep (every curation_id found, duplicated or not)."""
    delete: list[int]
    """Duplicates without annotations."""
    annotated: dict[str, list[int]]
    """curation_id → its annotated tasks, where more than one is annotated (none of them is deleted)."""


def plan_duplicates(found: Mapping[str, Sequence[RemoteTask]]) -> DuplicatePlan:
    """Which task of each curation_id stays: the oldest annotated one, else the oldest; every other task without
    annotations goes."""
    keep: dict[str, int] = {}
    delete: list[int] = []
    annotated: dict[str, list[int]] = {}
    for cid, tasks in found.items():
        ordered = sorted(tasks, key=lambda t: t.id)
        labeled = [t.id for t in ordered if t.annotations > 0]
        keep[cid] = labeled[0] if labeled else ordered[0].id
        delete.extend(t.id for t in ordered if t.id != keep[cid] and t.annotations == 0)
        if len(labeled) > 1:
            annotated[cid] = labeled
    return DuplicatePlan(keep, sorted(delete), annotated)


@dataclass(frozen=True)
class IntentOutcome:
    settled: list[int]
    """Intents to forget: every item was seen (or recorded), or the settle time passed with the rest absent."""
    held: frozenset[str]
    """Content ids not to import in this run: an earlier import of theirs may still commit."""
    released: frozenset[str]
    """Content ids of intents that settled absent: they may be imported again."""


def settle_intents(intents: Sequence[PushIntent], seen: set[str], now: datetime, settle_s: float) -> IntentOutcome:
    """Decide each unknown-outcome import: resolved when all its items are seen, still pending (its missing
    items held) before ``settle_s`` has passed since it was sent, provably absent after."""
    settled: list[int] = []
    held: set[str] = set()
    released: set[str] = set()
    for intent in intents:
        missing = {c for c in intent.content_ids if c not in seen}
        if not missing:
            settled.append(intent.id)
        elif (now - intent.created_at).total_seconds() >= settle_s:
            settled.append(intent.id)
            released |= missing
        else:
            held |= missing
    return IntentOutcome(settled, frozenset(held), frozenset(released - held))


@dataclass
class Reconciliation:
    adopted: int = 0
    """Tasks found in Label Studio and recorded here."""
    duplicates_removed: int = 0
    annotated_duplicates: list[dict[str, object]] = field(default_factory=list)
    """``{"curation_id", "task_ids"}`` for each item with more than one annotated task (left for a person)."""
    held: frozenset[str] = frozenset()
    """Content ids held back by imports whose outcome is still unknown."""


def reconcile(
    store: Store,
    ls: LabelStudioAPI,
    project: ProjectHandle,
    *,
    settle_s: float,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> Reconciliation:
    """Apply the module's three rules to ``project``. ``now`` (timezone-aware) is for tests."""
    progress = progress or NullProgress()
    pid = project.record.project_id
    found = curate_tasks(ls, pid)
    plan = plan_duplicates(found)
    out = Reconciliation()
    if plan.delete:
        # an annotator may have started on one since the sweep: look again right before deleting
        now_counts = annotation_counts(ls, pid, plan.delete)
        victims = [t for t in plan.delete if now_counts.get(t) == 0]
        ls.delete_tasks(pid, victims)
        out.duplicates_removed = len(victims)
        gone = set(victims)
        found = {cid: [t for t in tasks if t.id not in gone] for cid, tasks in found.items()}
        progress.warn(f"removed {len(victims)} duplicate task(s) from project {project.record.title}")
    for cid, ids in plan.annotated.items():
        out.annotated_duplicates.append({"curation_id": cid, "task_ids": ids})
    if plan.annotated:
        progress.warn(
            f"{len(plan.annotated)} item(s) have more than one annotated task in project {project.record.title} "
            "(kept, none deleted; see annotated_duplicates): resolve them in Label Studio"
        )

    recorded = store.label_studio.recorded(project.record.id)
    items = store.items.by_content(sorted(found))
    moves, rows = _adoptions(found, plan.keep, items, recorded)
    store.label_studio.remap_tasks(project.record.id, moves)
    out.adopted = store.label_studio.record_tasks(project.record.id, rows)

    intents = store.label_studio.intents(project.record.id)
    seen = set(found) | _recorded_content(store, project.record.id, intents)
    outcome = settle_intents(intents, seen, _now(now), settle_s)
    store.label_studio.drop_intents(outcome.settled)
    out.held = outcome.held
    if outcome.held:
        progress.warn(
            f"{len(outcome.held)} item(s) wait for an earlier import whose outcome is unknown: not imported again "
            f"until they appear in Label Studio, or label_studio.import_settle_s ({settle_s:g} s) passes without them"
        )
    return out


def _adoptions(
    found: Mapping[str, Sequence[RemoteTask]],
    keep: Mapping[str, int],
    items: Mapping[str, int],
    recorded: Mapping[int, RecordedTask],
) -> tuple[dict[int, int], list[dict[str, object]]]:
    """(old task id → kept task id for items recorded with a task that is no longer theirs; rows to adopt)."""
    moves: dict[int, int] = {}
    rows: list[dict[str, object]] = []
    for cid, tasks in found.items():
        item = items.get(cid)
        if item is None:
            continue  # another database's item: its tasks are deduplicated above, never adopted here
        mine = recorded.get(item)
        if mine is None:
            rows.append(
                {"item_id": item, "task_id": keep[cid], "position": None, "cluster": None, "selection_id": None}
            )
        elif mine.task_id not in {t.id for t in tasks} and mine.status in ("queued", "deleted"):
            moves[mine.task_id] = keep[cid]
    return moves, rows


def _recorded_content(store: Store, ls_project_id: int, intents: Sequence[PushIntent]) -> set[str]:
    """Content ids of the intents' items that are recorded here already (e.g. found right after the failure)."""
    ids = sorted({c for intent in intents for c in intent.content_ids})
    if not ids:
        return set()
    recorded = store.label_studio.recorded(ls_project_id)
    return {cid for cid, item in store.items.by_content(ids).items() if item in recorded}


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)
