"""Push, publish, reprioritize and pull against the in-memory Label Studio (tests/fake_labelstudio.py) and a real
SQLite store: the decisions (append or re-tag, reconcile, adopt, page) in milliseconds, without a server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from curation.config import LabelStudioSettings, StrategySettings
from curation.errors import ConfigError, LabelStudioError, ProjectNotFoundError
from curation.labelstudio.client import UNCERTAINTY_SAMPLING, ImportOutcomeUnknown
from curation.labelstudio.formats import label_config
from curation.labelstudio.project import ProjectHandle, ensure_storage, open_project
from curation.labelstudio.publish import Placement, Ranking, publish
from curation.labelstudio.pull import pull, watermark_with_margin
from curation.labelstudio.push import plan_push, push
from curation.labelstudio.rank import moved_count, rank_queue, ranking_options, ranking_signature
from curation.labelstudio.reconcile import plan_duplicates, settle_intents
from curation.labelstudio.reprioritize import reprioritize
from curation.labelstudio.tags import is_ours, make_tag, parse_tag
from curation.labelstudio.tasks import RemoteTask, updated_tasks
from curation.progress import NullProgress
from curation.selection import build_strategy
from curation.training.resolve import labeled_examples
from store import Store
from store.records import ModelVersionRecord, PushIntent, QueuedTask, ScannedFile, ScoredChunk, ScoredItem
from tests.fake_labelstudio import FakeLabelStudio

CLASSES = ["circle", "square", "triangle"]
CHOICE = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["square"]}}]


@dataclass
class World:
    store: Store
    ls: FakeLabelStudio
    mv: ModelVersionRecord
    pool_id: int
    pool: Path
    item_ids: list[int]
    cfg: LabelStudioSettings

    def project(self, name: str = "queue-test") -> ProjectHandle:
        return open_project(self.store, self.ls, self.mv, name)

    def select(self, project: ProjectHandle, items: list[int], clusters: list[int | None] | None = None) -> int:
        return self.store.selections.record(
            pool_id=self.pool_id,
            model_version_id=self.mv.id,
            strategy="entropy",
            options={},
            budget=len(items),
            item_ids=items,
            scores=[1.0 - i / 100 for i in range(len(items))],
            clusters=clusters,
            push_ls_project_id=project.record.id,
        )

    def push(self, project: ProjectHandle | None = None, **cfg: object):  # type: ignore[no-untyped-def]
        project = project or self.project()
        settings = self.cfg.model_copy(update=cfg)
        return push(self.store, self.ls, self.mv, project, settings, StrategySettings(name="entropy"), pool_path=None)

    def served(self, project_id: int) -> list[int]:
        """Task ids in the order the label stream serves them (each one labeled in turn)."""
        order = []
        while (task := self.ls.next_task(project_id)) is not None:
            order.append(task)
            self.ls.tasks[task]["annotations"].append({"id": -task})  # served: out of the stream
        for task in order:
            self.ls.tasks[task]["annotations"].clear()
        return order


def make_world(tmp_path: Path, ls: FakeLabelStudio, db: str = "c.db") -> World:
    """A scored pool of 12 items in database ``db`` (another name: a second database over the same pool)."""
    store = Store.open(f"sqlite:///{tmp_path / db}")
    pool = tmp_path / "root" / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    n = 12
    for i in range(n):
        (pool / f"img_{i:02d}.jpg").write_bytes(b"not decoded by push")
    pool_id = store.pools.get_or_create(str(pool), "directory", str(pool))
    store.pools.apply_scan(pool_id, [ScannedFile(f"img_{i:02d}.jpg", 10, 10, f"{i:032x}") for i in range(n)], [])
    known = store.pools.known_paths(pool_id)
    ids = [known[f"img_{i:02d}.jpg"].item_id for i in range(n)]
    mv = store.models.register(
        version="m-1",
        source="m.pt",
        format="ultralytics",
        task="classify",
        class_names=CLASSES,
        imgsz=64,
        embedding_dim=4,
    )
    rng = np.random.default_rng(0)
    chunk = ScoredChunk()
    for k, i in enumerate(ids):
        # item k's top probability rises with k: entropy ranks the early items first
        p = np.full(3, (1 - (0.34 + 0.05 * k)) / 2, np.float32)
        p[k % 3] = 0.34 + 0.05 * k
        e = rng.normal(size=4).astype(np.float32)
        chunk.scored.append(ScoredItem(item_id=i, width=64, height=48, probs=p, embedding=e / np.linalg.norm(e)))
    run = store.runs.start(mv.id, pool_id, n, "cpu", 4)
    store.runs.write_chunk(run, mv.id, chunk)
    store.runs.finish(run, "completed", 1.0)
    # superseded rankings deleted at once: what most tests here check (the grace period has its own test)
    cfg = LabelStudioSettings(
        project="queue-test", document_root=str(tmp_path / "root"), import_chunk=4, superseded_grace_s=0
    )
    return World(store, ls, mv, pool_id, pool, ids, cfg)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_world(tmp_path, FakeLabelStudio())
    yield made
    made.store.close()


def _task_of(world: World, project_id: int) -> dict[str, int]:
    return {t["data"]["curation_id"]: t["id"] for t in world.ls.project_tasks(project_id)}


def _content(world: World, item_ids: list[int]) -> list[str]:
    return [f"{world.item_ids.index(i):032x}" for i in item_ids]


# -- project ---------------------------------------------------------------------------------------------------------


def test_a_project_is_created_once_with_a_config_for_the_model(world: World) -> None:
    first = world.project()
    assert first.created and world.ls.projects[first.record.project_id]["label_config"] == label_config(
        "classify", CLASSES
    )
    again = world.project()
    assert not again.created and again.record == first.record
    assert world.ls.calls.count("create_project") == 1
    with pytest.raises(ConfigError, match="3 to 50"):
        world.project("ab")
    with pytest.raises(ProjectNotFoundError):
        world.project("999")
    with pytest.raises(ConfigError, match="--project"):
        open_project(world.store, world.ls, world.mv, None)


def test_local_storage_is_added_once_for_a_pool_inside_the_document_root(world: World, tmp_path: Path) -> None:
    project = world.project()
    assert ensure_storage(world.ls, project, world.cfg, str(world.pool)) == str(world.pool.resolve())
    ensure_storage(world.ls, project, world.cfg, str(world.pool))
    assert world.ls.storages[project.record.project_id] == [str(world.pool.resolve())]
    with pytest.raises(ConfigError, match="subfolder"):
        ensure_storage(
            world.ls, project, world.cfg.model_copy(update={"document_root": str(world.pool)}), str(world.pool)
        )
    assert (
        ensure_storage(world.ls, project, world.cfg.model_copy(update={"url_prefix": "s3://b"}), str(world.pool))
        is None
    )


# -- push ------------------------------------------------------------------------------------------------------------


def test_push_imports_once_and_the_stream_serves_the_selection_order(world: World) -> None:
    project = world.project()
    picked = world.item_ids[:6]
    world.select(project, picked)
    report = world.push(project)
    pid = project.record.project_id
    assert report.pushed == 6 and report.queue_size == 6 and report.reconciled == 0
    assert world.ls.projects[pid]["model_version"] == report.model_version_tag and is_ours(report.model_version_tag)
    assert world.ls.projects[pid]["sampling"] == UNCERTAINTY_SAMPLING
    assert world.ls.calls.count("import_tasks") == 2  # 6 tasks in chunks of 4
    tasks = _task_of(world, pid)
    assert world.served(pid) == [tasks[c] for c in _content(world, picked)]
    assert report.first == {
        "task_id": tasks[_content(world, picked)[0]],
        "item_id": _content(world, picked)[0],
        "position": 1,
    }
    assert list(report.summary()) == [
        "project_id", "project", "project_url", "created_project", "pushed", "reconciled", "awaiting_import",
        "duplicates_removed", "annotated_duplicates", "missing_files", "model_version_tag", "queue_size", "first",
        "served_after_s", "seconds",
    ]  # fmt: skip

    # nothing new: nothing imported, nothing rewritten
    calls = len(world.ls.calls)
    again = world.push()
    assert again.pushed == 0 and again.model_version_tag == report.model_version_tag
    assert not {"import_tasks", "import_predictions", "set_ranking"} & set(world.ls.calls[calls:])


def test_new_tasks_are_appended_under_the_live_tag_without_rewriting(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    first = world.push(project)
    world.select(project, world.item_ids[3:5])
    calls = len(world.ls.calls)
    second = world.push()
    assert second.pushed == 2 and second.model_version_tag == first.model_version_tag
    assert not {"import_predictions", "set_ranking", "delete_model_version"} & set(world.ls.calls[calls:])
    pid = project.record.project_id
    tasks = _task_of(world, pid)
    assert world.served(pid) == [tasks[c] for c in _content(world, world.item_ids[:5])]
    by_task = {p["task"]: p["score"] for p in world.ls.project_predictions(pid, first.model_version_tag)}
    scores = [by_task[t] for t in world.served(pid)]
    assert all(a < b for a, b in itertools.pairwise(scores)) and scores[0] > 0 and scores[-1] <= 1


def test_a_project_switched_away_is_re_tagged_old_tasks_first(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    first = world.push(project)
    pid = project.record.project_id
    world.ls.set_ranking(pid, "someone-elses-model")  # a user picked another model version in the UI
    theirs = [{"task": t, "model_version": "someone-elses-model", "score": 0.5} for t in _task_of(world, pid).values()]
    world.ls.import_predictions(pid, theirs)
    world.select(project, world.item_ids[3:5])
    second = world.push()
    assert second.pushed == 2 and second.model_version_tag != first.model_version_tag
    assert world.ls.projects[pid]["model_version"] == second.model_version_tag
    tasks = _task_of(world, pid)
    assert world.served(pid) == [tasks[c] for c in _content(world, world.item_ids[:5])]
    # curate's old ranking is gone; another tool's model version is never touched
    assert set(world.ls.model_versions(pid)) == {second.model_version_tag, "someone-elses-model"}


def test_plan_push_decides_append_or_re_tag(world: World) -> None:
    project = world.project()
    queue = [QueuedTask(1, "a", 10, 1, None), QueuedTask(2, "b", 11, 2, None)]
    assert plan_push(queue, 3, project, "m-1").append is False  # nothing served yet: a new tag
    tag = make_tag("m-1")
    world.store.label_studio.set_ranking(project.record.id, tag, None)
    project = world.project()
    assert plan_push(queue, 0, project, "m-1").append is False  # the live tag is not ours: re-tag
    world.ls.set_ranking(project.record.project_id, tag)
    project = world.project()
    assert plan_push(queue, 0, project, "m-1") is None  # serving, nothing new
    plan = plan_push(queue, 3, project, "m-1")
    assert plan is not None and plan.append and plan.tag == tag and plan.after == 2
    unplaced = [*queue, QueuedTask(3, "c", 12, None, None)]  # an adopted task has no position yet
    plan = plan_push(unplaced, 1, project, "m-1")
    assert plan is not None and not plan.append and plan.after == 3 and parse_tag(plan.tag) is not None
    plan = plan_push(unplaced, 0, project, "m-1")  # nothing new, but an adopted task to rank
    assert plan is not None and not plan.append
    assert plan_push([], 0, project, "m-1") is None  # nothing queued, nothing new (e.g. all held back)


def test_a_502_after_the_server_committed_records_the_tasks_without_duplicates(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    world.ls.fail_next_import("after-commit")
    report = world.push(project)
    pid = project.record.project_id
    assert report.pushed == 3 and len(world.ls.project_tasks(pid)) == 3
    assert world.store.label_studio.intents(project.record.id) == []


def test_an_import_that_never_arrived_is_held_then_imported_once_after_the_settle_time(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    world.ls.fail_next_import("before-commit")
    with pytest.raises(ImportOutcomeUnknown, match="not in the project"):
        world.push(project)
    assert len(world.store.label_studio.intents(project.record.id)) == 1  # kept: the next run looks before importing
    pid = project.record.project_id
    held = world.push()  # it may still be committing: not imported again yet
    assert held.pushed == 0 and held.awaiting_import == 3 and world.ls.project_tasks(pid) == []
    report = world.push(import_settle_s=0)  # settled, and still absent: now they are imported, once
    assert report.pushed == 3 and report.awaiting_import == 0 and len(world.ls.project_tasks(pid)) == 3
    assert world.store.label_studio.intents(project.record.id) == []


def test_a_slow_import_answered_504_is_adopted_when_it_lands_never_imported_twice(world: World) -> None:
    project = world.project()
    pid = project.record.project_id
    world.select(project, world.item_ids[:3])
    world.ls.fail_next_import("held")  # a proxy answers 504 while Label Studio still imports
    with pytest.raises(ImportOutcomeUnknown, match="not in the project"):
        world.push(project)
    world.select(project, world.item_ids[3:5])
    rerun = world.push()  # right away: the held items wait, the others are pushed
    assert rerun.pushed == 2 and rerun.awaiting_import == 3
    world.ls.land_held_import()
    ids = [t["data"]["curation_id"] for t in world.ls.project_tasks(pid)]
    assert len(ids) == 5 == len(set(ids))
    later = world.push()
    assert later.reconciled == 3 and later.pushed == 0 and later.awaiting_import == 0
    assert world.store.label_studio.intents(project.record.id) == []
    tasks = _task_of(world, pid)
    assert len(world.ls.project_tasks(pid)) == 5
    # the adopted tasks are ranked too: the whole queue is served
    assert sorted(world.served(pid)) == sorted(tasks.values())


def test_settle_intents_holds_until_seen_or_settled_absent() -> None:
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    intents = [PushIntent(1, ["a", "b"], sent), PushIntent(2, ["c"], sent), PushIntent(3, ["d"], sent)]
    early = settle_intents(intents, {"a", "b", "d"}, sent + timedelta(seconds=10), settle_s=60)
    assert early.settled == [1, 3] and early.held == {"c"} and not early.released
    late = settle_intents(intents, {"a"}, sent + timedelta(seconds=60), settle_s=60)
    assert late.settled == [1, 2, 3] and not late.held and late.released == {"b", "c", "d"}


def test_a_refused_import_leaves_no_intent_to_wait_for(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    world.ls.fail_next_import("refused")
    with pytest.raises(LabelStudioError, match="400"):
        world.push(project)
    assert world.store.label_studio.intents(project.record.id) == []
    assert world.push().pushed == 3


def test_plan_duplicates_keeps_the_oldest_or_the_annotated_task() -> None:
    found = {
        "a": [RemoteTask(5, "a", 0), RemoteTask(2, "a", 0), RemoteTask(9, "a", 0)],
        "b": [RemoteTask(3, "b", 0), RemoteTask(7, "b", 1)],
        "c": [RemoteTask(4, "c", 1), RemoteTask(8, "c", 2), RemoteTask(10, "c", 0)],
        "d": [RemoteTask(6, "d", 0)],
    }
    plan = plan_duplicates(found)
    assert plan.keep == {"a": 2, "b": 7, "c": 4, "d": 6}
    assert plan.delete == [3, 5, 9, 10]  # never a task with annotations
    assert plan.annotated == {"c": [4, 8]}


def test_reconcile_removes_existing_duplicates_and_never_an_annotated_task(world: World) -> None:
    project = world.project()
    pid = project.record.project_id
    world.select(project, world.item_ids[:4])
    world.push(project)
    original = _task_of(world, pid)
    a, b, c, _ = _content(world, world.item_ids[:4])
    data = {t["data"]["curation_id"]: t["data"] for t in world.ls.project_tasks(pid)}
    dup_a = world.ls.add_task(pid, data[a])  # newer, empty: deleted
    dup_b = world.ls.add_task(pid, data[b])  # newer, annotated: kept, the older empty one goes
    world.ls.annotate(dup_b, CHOICE)
    dup_c = world.ls.add_task(pid, data[c])  # both annotated: both stay, reported
    world.ls.annotate(original[c], CHOICE)
    world.ls.annotate(dup_c, CHOICE, cancelled=True)
    report = world.push()
    assert report.duplicates_removed == 2 and report.pushed == 0
    assert report.annotated_duplicates == [{"curation_id": c, "task_ids": [original[c], dup_c]}]
    left = {t["id"] for t in world.ls.project_tasks(pid)}
    assert dup_a not in left and original[b] not in left and {original[a], dup_b, original[c], dup_c} <= left
    recorded = {r.task_id for r in world.store.label_studio.recorded(project.record.id).values()}
    assert dup_b in recorded and original[b] not in recorded  # this database follows the kept task
    assert world.push().duplicates_removed == 0


def test_a_second_database_with_tasks_of_its_own_adopts_instead_of_duplicating(world: World, tmp_path: Path) -> None:
    other = make_world(tmp_path, world.ls, db="other.db")
    try:
        mine, theirs = world.project(), other.project()
        pid = mine.record.project_id
        world.select(mine, world.item_ids[:4])
        world.push(mine)
        other.select(theirs, other.item_ids[:4])
        assert other.push(theirs).reconciled == 4  # it had no task in the project yet
        world.select(mine, world.item_ids[4:8])
        world.push()
        other.select(theirs, other.item_ids[4:8])
        second = other.push()  # it has tasks there now: still looks before importing
        assert second.reconciled == 4 and second.pushed == 0
        ids = [t["data"]["curation_id"] for t in world.ls.project_tasks(pid)]
        assert len(ids) == 8 == len(set(ids))
    finally:
        other.store.close()


def test_a_new_database_adopts_the_projects_tasks_instead_of_duplicating(world: World, tmp_path: Path) -> None:
    project = world.project()
    world.select(project, world.item_ids[:4])
    world.push(project)
    world.ls.add_task(project.record.project_id, {"image": "/x.jpg"})  # a user's own task: never adopted
    # the records are lost: an empty ls_tasks table for the same project
    with world.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM ls_tasks")
    report = world.push()
    assert report.reconciled == 4 and report.pushed == 0
    assert len(world.ls.project_tasks(project.record.project_id)) == 5


def test_missing_files_are_skipped_and_reported(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    (world.pool / "img_01.jpg").unlink()
    report = world.push(project)
    assert report.pushed == 2 and report.missing_files == ["img_01.jpg"]


def test_clusters_are_set_on_the_head_of_the_queue_only(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:5], clusters=[0, 1, 0, 2, 1])
    report = world.push(project, cluster_window=3)
    pid = project.record.project_id
    by_task = {p["task"]: p["cluster"] for p in world.ls.project_predictions(pid, report.model_version_tag)}
    tasks = _task_of(world, pid)
    assert [by_task[tasks[c]] for c in _content(world, world.item_ids[:5])] == [0, 1, 0, None, None]


# -- publish ---------------------------------------------------------------------------------------------------------


def test_publish_writes_switches_records_and_drops_curates_other_tags(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:4])
    old = world.push(project).model_version_tag
    pid = project.record.project_id
    project = world.project()
    queue = world.store.label_studio.queue(project.record.id)
    reversed_queue = [Placement(q.item_id, q.task_id, pos, None, pos / 10) for pos, q in enumerate(reversed(queue), 1)]
    tag = make_tag("m-1")
    calls = len(world.ls.calls)
    publish(
        world.store, world.ls, project, world.mv, Ranking(tag, reversed_queue, signature="sig"),
        min_conf=0.25, chunk=4, cluster_window=10, progress=NullProgress(),
    )  # fmt: skip
    steps = [c for c in world.ls.calls[calls:] if c in ("import_predictions", "set_ranking", "delete_model_version")]
    assert steps == ["import_predictions", "set_ranking", "delete_model_version"]
    assert world.served(pid) == [q.task_id for q in reversed(queue)]
    assert set(world.ls.model_versions(pid)) == {tag} and old != tag
    record = world.store.label_studio.projects()[0]
    assert (record.active_tag, record.ranking_signature) == (tag, "sig")
    assert [q.task_id for q in world.store.label_studio.queue(project.record.id)] == [
        q.task_id for q in reversed(queue)
    ]


def test_a_task_deleted_in_label_studio_leaves_the_queue_when_publishing(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:4])
    world.push(project)
    pid = project.record.project_id
    victim = world.ls.next_task(pid)
    assert victim is not None
    world.ls.delete_task(victim)
    strategy = StrategySettings(name="random")
    report = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg, strategy, pool_path=None, force=True
    )
    assert report.changed
    assert len(world.ls.project_predictions(pid, report.model_version_tag)) == 3
    assert victim not in {q.task_id for q in world.store.label_studio.queue(project.record.id)}
    assert victim not in {row["task_id"] for row in report.top} and len(report.top) == 3  # "Next in the queue"


# -- rank and reprioritize -------------------------------------------------------------------------------------------


def test_ranking_signature_ignores_the_queues_order_but_not_what_changes_the_ranking(world: World) -> None:
    sig = ranking_signature(world.mv, "entropy", {"a": 1}, 0, [3, 1, 2])
    assert sig == ranking_signature(world.mv, "entropy", {"a": 1}, 0, [1, 2, 3])
    assert sig != ranking_signature(world.mv, "margin", {"a": 1}, 0, [1, 2, 3])
    assert sig != ranking_signature(world.mv, "entropy", {"a": 2}, 0, [1, 2, 3])
    assert sig != ranking_signature(world.mv, "entropy", {"a": 1}, 1, [1, 2, 3])
    assert sig != ranking_signature(world.mv, "entropy", {"a": 1}, 0, [1, 2])
    base = StrategySettings()
    assert ranking_options(base, world.mv, 0) != ranking_options(
        base.model_copy(update={"min_distance": 0.2}), world.mv, 0
    )
    assert ranking_options(base, world.mv, 0) != ranking_options(base, world.mv, 1)


def test_rank_queue_orders_by_the_strategy_and_keeps_unscored_tasks_at_the_end(world: World) -> None:
    queue = [QueuedTask(i, f"{k:032x}", 100 + k, k + 1, None) for k, i in enumerate(world.item_ids[:6])]
    unscored_id = world.store.pools.get_or_create("/other", "directory", "/other")
    world.store.pools.apply_scan(unscored_id, [ScannedFile("x.jpg", 1, 1, "f" * 32)], [])
    unscored = world.store.pools.known_paths(unscored_id)["x.jpg"].item_id
    queue.insert(0, QueuedTask(unscored, "f" * 32, 99, 0, None))
    cfg = StrategySettings(name="entropy")
    ordered, _ = rank_queue(world.store, cfg, world.mv, queue, build_strategy(cfg), np.zeros(0, np.int64))
    # entropy: the flattest prediction (item 0) first, the most confident last; the unscored task stays, last
    assert [q.item_id for q in ordered] == [*world.item_ids[:6], unscored]
    cfg = StrategySettings(name="kcenter")
    ordered, clusters = rank_queue(world.store, cfg, world.mv, queue[1:], build_strategy(cfg), np.zeros(0, np.int64))
    assert sorted(q.item_id for q in ordered) == sorted(world.item_ids[:6])
    assert set(clusters) == set(world.item_ids[:6]) and all(c is not None for c in clusters.values())


def test_reprioritize_re_ranks_then_is_a_no_op_until_something_changes(world: World) -> None:
    project = world.project()
    world.select(project, list(reversed(world.item_ids[:5])))  # pushed in the opposite of entropy's order
    world.push(project)
    pid = project.record.project_id
    entropy = StrategySettings(name="entropy")

    def run(cfg: StrategySettings, **kw: object):  # type: ignore[no-untyped-def]
        return reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, cfg, pool_path=None, **kw)  # type: ignore[arg-type]

    report = run(entropy)
    assert report.changed and report.reason == "re-ranked with entropy" and report.strategy == "entropy"
    assert report.moved == 4 and report.queue_size == 5  # all but the middle one moved
    tasks = _task_of(world, pid)
    assert world.served(pid) == [tasks[c] for c in _content(world, world.item_ids[:5])]
    assert [t["task_id"] for t in report.top] == world.served(pid)
    assert 0 < report.served_after_s <= report.seconds
    assert list(report.summary()) == [
        "project_id", "project", "project_url", "changed", "reason", "model_version_tag", "queue_size",
        "topped_up", "moved", "top", "served_after_s", "seconds", "model_version", "model_note",
    ]  # fmt: skip

    calls = len(world.ls.calls)
    noop = run(entropy)
    assert not noop.changed and noop.reason == "nothing changed since the last ranking"
    assert "import_predictions" not in world.ls.calls[calls:]
    assert run(entropy.model_copy(update={"min_distance": 0.3})).changed
    assert run(entropy.model_copy(update={"min_distance": 0.3}), force=True).changed


def test_reprioritize_tops_the_queue_up(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:2])
    world.push(project)
    report = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(name="entropy"),
        pool_path=None, queue_size=5,
    )  # fmt: skip
    assert report.topped_up == 3 and report.queue_size == 5 and report.push is not None
    pid = project.record.project_id
    assert len(world.served(pid)) == 5
    by_task = {p["task"]: p["score"] for p in world.ls.project_predictions(pid, report.model_version_tag)}
    scores = [by_task[t] for t in world.served(pid)]
    assert all(a < b for a, b in itertools.pairwise(scores)) and len(scores) == 5


def test_an_empty_queue_is_reported_not_ranked(world: World) -> None:
    report = reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(), pool_path=None)
    assert not report.changed and report.reason == "the queue is empty" and report.queue_size == 0


# -- pull ------------------------------------------------------------------------------------------------------------


def test_pull_stores_annotations_once_and_advances_the_watermark(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:4])
    world.push(project)
    pid = project.record.project_id
    tasks = list(_task_of(world, pid).values())
    world.ls.advance(5)
    world.ls.annotate(tasks[0], CHOICE)
    world.ls.annotate(tasks[1], [], cancelled=True)
    world.ls.add_task(pid, {"image": "/someone-elses.jpg"})
    report = pull(world.store, world.ls, "queue-test")
    assert (report.new_annotations, report.labeled_tasks, report.skipped_tasks) == (2, 1, 1)
    assert report.tasks_seen == 5 and report.foreign_tasks == 1
    assert list(report.summary()) == [
        "project_id", "project", "tasks_seen", "new_annotations", "labeled_tasks", "skipped_tasks",
        "deleted_annotations", "unchanged_predictions", "foreign_tasks", "watermark",
    ]  # fmt: skip
    assert report.watermark == max(t["updated_at"] for t in world.ls.project_tasks(pid))
    assert world.store.label_studio.projects()[0].pulled_until == report.watermark
    assert len(world.store.label_studio.queue(project.record.id)) == 2  # labeled and skipped tasks leave the queue
    examples = world.store.labels.examples("classify")
    assert len(examples) == 1
    # a rerun reads what changed since, plus the last second before the watermark (the margin: the two tasks
    # annotated and the foreign one, not the two untouched since the push), and stores nothing twice
    world.ls.advance(5)
    world.ls.annotate(tasks[2], CHOICE)
    again = pull(world.store, world.ls, "queue-test")
    assert again.new_annotations == 1 and again.tasks_seen == 4 and again.foreign_tasks == 1
    # "labeled" counts the new label only, not the re-read task labeled by the first pull
    assert (again.labeled_tasks, again.skipped_tasks) == (1, 0)


def test_pull_tells_labels_that_accepted_the_models_guess_unchanged(world: World) -> None:
    """The labeling UI pre-fills each annotation from the task's prediction (``parent_prediction``): submitted
    with the same labels, it is the model's guess stored as a label. Pull counts those, and
    ``pull.unchanged_predictions: exclude`` keeps them out of training."""
    project = world.project()
    world.select(project, world.item_ids[:5])
    world.push(project)
    pid = project.record.project_id
    tasks = sorted(_task_of(world, pid).values())
    live = {p["task"]: p for p in world.ls.project_predictions(pid, world.ls.projects[pid]["model_version"])}
    guess = {t: live[t]["result"] for t in tasks}

    def another(task: int) -> list[dict[str, object]]:
        shown = guess[task][0]["value"]["choices"]
        return [{**guess[task][0], "value": {"choices": [next(c for c in CLASSES if [c] != shown)]}}]

    world.ls.annotate(tasks[0], guess[tasks[0]], parent_prediction=live[tasks[0]]["id"])  # submitted as shown
    world.ls.annotate(tasks[1], another(tasks[1]), parent_prediction=live[tasks[1]]["id"])  # another class chosen
    world.ls.annotate(tasks[2], guess[tasks[2]])  # labeled without a pre-annotation, agreeing with the model
    world.ls.annotate(tasks[3], guess[tasks[3]], parent_prediction=live[tasks[3]]["id"], cancelled=True)  # skipped
    report = pull(world.store, world.ls, "queue-test")
    assert report.new_annotations == 4 and report.unchanged_predictions == 1
    flags = {e.item_id: e.unchanged_prediction for e in world.store.labels.examples("classify", every=True)}
    item_of = world.store.label_studio.items_for_tasks(project.record.id, tasks)
    assert flags == {item_of[tasks[0]]: True, item_of[tasks[1]]: False, item_of[tasks[2]]: False}
    kept = {e.item_id for e in labeled_examples(world.store, "classify", "latest", "keep")}
    excluded = {e.item_id for e in labeled_examples(world.store, "classify", "latest", "exclude")}
    assert kept == set(flags) and excluded == kept - {item_of[tasks[0]]}
    assert {e.item_id for e in labeled_examples(world.store, "classify", "majority", "exclude")} == excluded
    # a re-read annotation is not counted again; a second labeler's own label of the item makes it trainable
    world.ls.advance(5)
    world.ls.annotate(tasks[0], another(tasks[0]), user=8, parent_prediction=live[tasks[0]]["id"])
    again = pull(world.store, world.ls, "queue-test")
    assert again.new_annotations == 1 and again.unchanged_predictions == 0
    assert item_of[tasks[0]] in {e.item_id for e in labeled_examples(world.store, "classify", "latest", "exclude")}
    with pytest.raises(ValueError, match="unchanged_predictions"):
        labeled_examples(world.store, "classify", "latest", "drop")


def test_an_annotation_deleted_in_label_studio_is_no_longer_a_label(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    world.push(project)
    pid = project.record.project_id
    tasks = list(_task_of(world, pid).values())
    first = world.ls.annotate(tasks[0], CHOICE)
    world.ls.annotate(tasks[1], CHOICE)
    pull(world.store, world.ls, "queue-test")
    assert len(world.store.labels.examples("classify")) == 2 and len(world.store.labels.item_ids()) == 2
    world.ls.advance(5)
    world.ls.delete_annotation(tasks[0], first)
    report = pull(world.store, world.ls, "queue-test")
    assert report.deleted_annotations == 1 and report.new_annotations == 0
    assert len(world.store.labels.examples("classify")) == 1 and len(world.store.labels.item_ids()) == 1
    # the task waits in the queue again, and the next ranking serves it
    assert tasks[0] in {q.task_id for q in world.store.label_studio.queue(project.record.id)}


def test_pull_adopts_tasks_pushed_from_another_database(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    world.push(project)
    pid = project.record.project_id
    with world.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM ls_tasks")
    for task in _task_of(world, pid).values():
        world.ls.annotate(task, CHOICE)
    report = pull(world.store, world.ls, "queue-test")
    assert report.new_annotations == 3 and report.labeled_tasks == 3 and report.foreign_tasks == 0


def test_pull_needs_a_project_this_database_pushed_to(world: World) -> None:
    world.ls.create_project("not-ours", label_config("classify", CLASSES))
    with pytest.raises(ProjectNotFoundError, match="has not pushed"):
        pull(world.store, world.ls, "not-ours")
    with pytest.raises(ProjectNotFoundError, match="has no project"):
        pull(world.store, world.ls, "missing")


def test_paging_misses_nothing_when_a_task_is_updated_mid_pull(world: World) -> None:
    project = world.ls.create_project("paging", label_config("classify", CLASSES))
    ids = [world.ls.add_task(project["id"], {"image": f"/x/{i}.jpg"}) for i in range(7)]
    seen: list[int] = []
    for number, page in enumerate(updated_tasks(world.ls, project["id"], None, page_size=2)):
        seen.extend(int(t["id"]) for t in page)
        if number == 0:  # a labeler finishes a task of the first page: it moves to the end of the order
            world.ls.annotate(int(page[0]["id"]), CHOICE)
    assert set(seen) == set(ids) and len(seen) == len(ids) + 1  # the updated task comes again


def test_paging_widens_past_a_full_page_updated_in_the_same_instant(world: World) -> None:
    project = world.ls.create_project("same-instant", label_config("classify", CLASSES))
    first = world.ls.add_task(project["id"], {"image": "/a.jpg"})
    world.ls.frozen = True
    same = [world.ls.add_task(project["id"], {"image": f"/s/{i}.jpg"}) for i in range(5)]
    world.ls.frozen = False
    last = world.ls.add_task(project["id"], {"image": "/z.jpg"})
    seen = [int(t["id"]) for page in updated_tasks(world.ls, project["id"], None, page_size=2) for t in page]
    assert sorted(seen) == sorted([first, *same, last]) and len(seen) == len(set(seen))


def test_the_watermark_margin() -> None:
    at = watermark_with_margin("2026-01-01T00:00:10.000000Z")
    assert at is not None and at.isoformat() == "2026-01-01T00:00:09+00:00"
    assert watermark_with_margin(None) is None


# -- the queue as labelers see it (issue 14) -------------------------------------------------------------------------


def _serve(world: World, pid: int, user: int, n: int, *, submit: bool = True) -> list[int]:
    """The next ``n`` tasks the label stream gives ``user``, each submitted before asking again."""
    got = []
    for _ in range(n):
        task = world.ls.next_task(pid, user)
        if task is None:
            break
        got.append(task)
        if submit:
            world.ls.annotate(task, CHOICE, user=user)
    return got


def _ranked_tasks(world: World, pid: int, items: list[int]) -> list[int]:
    tasks = _task_of(world, pid)
    return [tasks[c] for c in _content(world, items)]


def test_by_default_every_labeler_is_served_curates_rank_order_even_with_clusters(world: World) -> None:
    project = world.project()
    items = world.item_ids[:6]
    world.select(project, items, clusters=[0, 1, 0, 1, 2, 2])  # what hybrid gives
    world.push(project)
    pid = project.record.project_id
    ranked = _ranked_tasks(world, pid, items)
    assert all(p["cluster"] is None for p in world.ls.project_predictions(pid))
    assert _serve(world, pid, user=1, n=3) == ranked[:3]
    assert _serve(world, pid, user=2, n=3) == ranked[3:6]  # a second labeler continues down the same order


def test_cluster_spreading_is_opt_in_and_serves_each_labeler_from_their_least_labeled_cluster(world: World) -> None:
    project = world.project()
    items = world.item_ids[:6]
    world.select(project, items, clusters=[0, 1, 0, 1, 2, 2])
    world.push(project, cluster_window=200)
    pid = project.record.project_id
    ranked = _ranked_tasks(world, pid, items)
    # ranks 1 (cluster 0), 2 (cluster 1), 5 (cluster 2: the one this labeler has not labeled), then 3
    assert _serve(world, pid, user=1, n=4) == [ranked[0], ranked[1], ranked[4], ranked[2]]


def test_a_locked_task_is_served_to_its_labeler_first_after_a_re_rank(world: World) -> None:
    """Label Studio's limit, documented: a task a labeler opened stays theirs (TASK_LOCK_TTL) whatever the new
    ranking; the others are served the top of the new queue without it."""
    project = world.project()
    items = world.item_ids[:5]
    world.select(project, list(reversed(items)))  # pushed in the opposite of entropy's order
    world.push(project)
    pid = project.record.project_id
    opened = world.ls.next_task(pid, 1)  # labeler 1 opens rank 1 and leaves it open
    report = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(name="entropy"), pool_path=None
    )
    assert report.changed
    ranked = _ranked_tasks(world, pid, items)
    assert opened == ranked[-1]  # now ranked last
    assert world.ls.next_task(pid, 1) == opened  # still served to its labeler first
    assert _serve(world, pid, user=2, n=2) == ranked[:2]  # an idle labeler gets the new head
    world.ls.advance(world.ls.lock_ttl_s + 1)  # the lock expires: the task is anyone's again
    assert world.ls.next_task(pid, 3) == ranked[2]


def test_a_skipped_task_stays_ranked_and_keeps_its_prediction_where_the_project_requeues_skips(world: World) -> None:
    project = world.project()
    items = world.item_ids[:4]
    world.select(project, items)
    world.push(project)
    pid = project.record.project_id
    ranked = _ranked_tasks(world, pid, items)
    assert world.ls.next_task(pid, 1) == ranked[0]
    world.ls.annotate(ranked[0], [], cancelled=True, user=1)  # labeler 1 skips rank 1
    pull(world.store, world.ls, "queue-test")
    report = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(name="entropy"), pool_path=None
    )
    assert report.changed and report.queue_size == 4
    live = {p["task"] for p in world.ls.project_predictions(pid, report.model_version_tag)}
    assert ranked[0] in live
    assert world.ls.next_task(pid, 2) == ranked[0]  # "requeue for others": the next labeler gets it, in rank order
    assert world.ls.next_task(pid, 1) != ranked[0]


def test_with_ignore_skipped_a_skip_finishes_the_task_and_its_prediction_is_kept(world: World) -> None:
    project = world.project()
    world.ls.projects[project.record.project_id]["skip_queue"] = "IGNORE_SKIPPED"
    items = world.item_ids[:4]
    world.select(project, items)
    world.push(project)
    pid = project.record.project_id
    ranked = _ranked_tasks(world, pid, items)
    world.ls.annotate(ranked[0], [], cancelled=True, user=1)
    pull(world.store, world.ls, "queue-test")
    report = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(name="entropy"), pool_path=None
    )
    assert report.queue_size == 3
    kept = [p for p in world.ls.task_predictions(ranked[0])]
    assert [p["model_version"] for p in kept] == ["m-1"]


def test_labeled_tasks_keep_the_prediction_they_were_labeled_with(world: World) -> None:
    project = world.project()
    items = world.item_ids[:4]
    world.select(project, items)
    first_tag = world.push(project).model_version_tag
    pid = project.record.project_id
    ranked = _ranked_tasks(world, pid, items)
    shown = next(p for p in world.ls.task_predictions(ranked[0]) if p["model_version"] == first_tag)
    world.ls.annotate(ranked[0], CHOICE, user=1)
    pull(world.store, world.ls, "queue-test")
    for _ in range(2):  # kept once, never twice
        report = reprioritize(
            world.store, world.ls, world.mv, world.pool_id, world.cfg, StrategySettings(name="entropy"),
            pool_path=None, force=True,
        )  # fmt: skip
    assert report.queue_size == 3
    kept = world.ls.task_predictions(ranked[0])
    assert [(p["model_version"], p["score"], p["result"]) for p in kept] == [("m-1", shown["score"], shown["result"])]
    # the queued tasks carry only the live ranking: nothing the queue no longer needs is left
    for task in ranked[1:]:
        assert [p["model_version"] for p in world.ls.task_predictions(task)] == [report.model_version_tag]


def test_a_plain_reprioritize_repairs_a_project_switched_back_to_sequential_sampling(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:4])
    world.push(project)
    pid = project.record.project_id
    entropy = StrategySettings(name="entropy")
    reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, entropy, pool_path=None)
    tag = world.ls.projects[pid]["model_version"]
    world.ls.projects[pid]["sampling"] = "Sequential sampling"  # someone, in the project's settings
    assert world.ls.next_task(pid) is None
    calls = len(world.ls.calls)
    report = reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, entropy, pool_path=None)
    assert report.changed and "sampling is 'Sequential sampling'" in report.reason
    assert "import_predictions" not in world.ls.calls[calls:]  # the ranking is there: only the switch is redone
    assert world.ls.projects[pid]["sampling"] == UNCERTAINTY_SAMPLING and world.ls.projects[pid]["model_version"] == tag
    assert world.ls.next_task(pid) is not None
    world.ls.projects[pid]["model_version"] = "someone-elses"
    report = reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, entropy, pool_path=None)
    assert report.changed and world.ls.projects[pid]["model_version"] == tag
    noop = reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, entropy, pool_path=None)
    assert not noop.changed


def test_moved_counts_tasks_that_changed_place_not_everyone_behind_them() -> None:
    assert moved_count([1, 2, 3, 4]) == 0
    assert moved_count([2, 3, 4, 5]) == 0  # the head was labeled: the rest only moved up
    assert moved_count([5, 1, 2, 3, 4]) == 1  # one task jumped to the front
    assert moved_count([5, 4, 3, 2, 1]) == 4
    assert moved_count([None, 1, 2]) == 0  # a new task is not a move


def test_the_live_prediction_score_is_the_models_confidence_and_sorts_in_queue_order(world: World) -> None:
    """What a lead sorting the Data Manager's prediction-score column sees: the live order, and numbers that mean
    something (1 − the strategy's uncertainty), not position / 10^6 (0.000 on every row)."""
    from curation.selection import items_uncertainty

    project = world.project()
    items = world.item_ids[:6]
    world.select(project, list(reversed(items)))
    world.push(project)
    pid = project.record.project_id
    entropy = StrategySettings(name="entropy")
    report = reprioritize(world.store, world.ls, world.mv, world.pool_id, world.cfg, entropy, pool_path=None)
    by_task = {p["task"]: p["score"] for p in world.ls.project_predictions(pid, report.model_version_tag)}
    served = world.served(pid)
    assert [by_task[t] for t in served] == sorted(by_task.values())
    u = items_uncertainty(world.store, world.mv, np.array(items), "entropy", entropy.detection).uncertainty
    assert [by_task[t] for t in served] == pytest.approx([1 - x for x in u], abs=1e-8)
    assert all(0.0 < s < 1.0 for s in by_task.values()) and max(by_task.values()) - min(by_task.values()) > 0.1
    # the task data carries nothing that would go stale on a re-rank
    assert all(set(t["data"]) == {"image", "curation_id"} for t in world.ls.project_tasks(pid))


def test_status_shows_skipped_tasks_and_the_uncertainty_without_a_pool(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from curation.config import load_settings
    from curation.jobs.status import status

    project = world.project()
    world.select(project, world.item_ids[:4])
    world.push(project)
    tasks = list(_task_of(world, project.record.project_id).values())
    world.ls.annotate(tasks[0], CHOICE)
    world.ls.annotate(tasks[1], [], cancelled=True)
    pull(world.store, world.ls, "queue-test")
    report = status(world.store, load_settings(None, {}, environ={}))
    assert report["counts"]["skipped"] == 1 and report["counts"]["labeled"] == 1 and report["counts"]["queued"] == 2
    assert report["score_distribution"] is not None and report["score_distribution"]["candidates"] > 0
    result = CliRunner().invoke(app, ["status", "--db", f"sqlite:///{tmp_path / 'c.db'}"])
    assert result.exit_code == 0, result.stderr
    assert "skipped" in result.stdout and "Uncertainty" in result.stdout


def test_a_superseded_ranking_stays_for_the_grace_period_so_open_tasks_can_still_be_submitted(world: World) -> None:
    """Label Studio refuses a submission whose pre-annotation's prediction was deleted (400, parent_prediction):
    the browser test found a labeler unable to submit the task they had open during a re-rank."""
    from curation.labelstudio.publish import drop_other_tags

    project = world.project()
    world.select(project, world.item_ids[:4])
    old = world.push(project).model_version_tag
    pid = project.record.project_id
    cfg = world.cfg.model_copy(update={"superseded_grace_s": 3600.0})
    entropy = StrategySettings(name="entropy")
    new = reprioritize(world.store, world.ls, world.mv, world.pool_id, cfg, entropy, pool_path=None).model_version_tag
    assert set(world.ls.model_versions(pid)) == {old, new}  # the old predictions stay: open tasks still submit
    assert world.ls.projects[pid]["model_version"] == new
    superseded = parse_tag(new)
    assert superseded is not None
    assert drop_other_tags(world.ls, pid, new, grace_s=3600, now=superseded.created + timedelta(seconds=3599)) == []
    assert drop_other_tags(world.ls, pid, new, grace_s=3600, now=superseded.created + timedelta(seconds=3600)) == [old]
    assert set(world.ls.model_versions(pid)) == {new}
