"""The test set (``curation.training.testset``): sizing, the seeded uniform draw, its queue position rule and its
labels kept out of training and export — against the in-memory Label Studio and a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from curation.config import StrategySettings, TrainSettings
from curation.errors import ConfigError, NothingToSelectError
from curation.labelstudio.pool import mark_test_tasks
from curation.labelstudio.pull import pull
from curation.labelstudio.rank import place_tests
from curation.labelstudio.reprioritize import reprioritize
from curation.selection import run_selection
from curation.training.resolve import labeled_examples
from curation.training.testset import (
    TestSetReport,
    draw_test_set,
    random_key,
    size_for_half_width,
    split_test,
    target_size,
)
from tests.fake_labelstudio import FakeLabelStudio
from tests.test_ls_queue import CHOICE, World, make_world

STRATEGY = StrategySettings(name="entropy")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = make_world(tmp_path, FakeLabelStudio())
    yield made
    made.store.close()


def _draw(world: World, n: int, seed: int = 0, push_to: int | None = None) -> TestSetReport:
    return draw_test_set(world.store, world.pool_id, world.mv, n, STRATEGY, seed=seed, push_to=push_to)


def test_size_for_half_width_is_the_normal_interval_on_a_proportion() -> None:
    assert size_for_half_width(0.05, 0.95) == 385  # the textbook worst case
    assert size_for_half_width(0.05, 0.95, 0.9) == 139  # a model at 90 % needs fewer
    assert size_for_half_width(0.1, 0.95) == 97
    assert size_for_half_width(0.05, 0.99) == 664
    assert size_for_half_width(0.05, 0.95, 1.0) >= 1  # a perfect model still gets a set


def test_target_size_auto_reads_the_current_models_metric(world: World) -> None:
    train = TrainSettings(test_set_size="auto", eval_half_width=0.05)
    assert target_size(train, None) == 385
    world.store.models.set_metrics(world.mv.id, "accuracy", 0.9, {"accuracy": 0.9})
    assert target_size(train, world.store.models.get(world.mv.version)) == 139
    assert target_size(train, None, 40) == 40 and target_size(TrainSettings(), None) is None
    with pytest.raises(ValidationError, match="eval_half_width"):
        TrainSettings(test_set_size="auto")
    with pytest.raises(ValidationError, match="at least 1"):
        TrainSettings(test_set_size=0)
    with pytest.raises(ConfigError, match="eval_half_width"):
        target_size(TrainSettings(), None, "auto")
    with pytest.raises(ConfigError, match="positive number"):
        target_size(TrainSettings(), None, "many")


def test_the_draw_is_seeded_uniform_and_never_draws_twice(world: World, tmp_path: Path) -> None:
    first = _draw(world, 4)
    assert first.drawn == 4 and first.size == 4 and first.eligible == 12
    drawn = world.store.selections.test_items()
    contents = {i: f"{world.item_ids.index(i):032x}" for i in world.item_ids}
    # the 4 smallest random keys of all 12 items, in key order: not the strategy's (entropy ranks item 0 first)
    expected = sorted(world.item_ids, key=lambda i: random_key(contents[i], 0))[:4]
    assert list(drawn) == expected
    assert _draw(world, 4).drawn == 0 and world.store.selections.test_items() == drawn  # a rerun draws nothing
    grown = _draw(world, 6)  # a top-up continues the same random order
    assert (
        grown.drawn == 2
        and list(world.store.selections.test_items())
        == sorted(world.item_ids, key=lambda i: random_key(contents[i], 0))[:6]
    )
    # the same seed over the same pool in another database draws the same items; another seed, others
    (tmp_path / "other").mkdir()
    other = make_world(tmp_path / "other", FakeLabelStudio())
    try:
        draw_test_set(other.store, other.pool_id, other.mv, 4, STRATEGY, seed=0)
        assert [other.item_ids.index(i) for i in other.store.selections.test_items()] == [
            world.item_ids.index(i) for i in expected
        ]
    finally:
        other.store.close()
    assert sorted(world.item_ids, key=lambda i: random_key(contents[i], 1))[:4] != expected


def test_the_strategy_never_selects_a_test_item_and_the_draw_never_takes_a_selected_one(world: World) -> None:
    project = world.project()
    world.select(project, world.item_ids[:3])
    report = _draw(world, 5)
    tests = set(world.store.selections.test_items())
    assert report.eligible == 9 and not tests & set(world.item_ids[:3])
    picked = run_selection(world.store, world.pool_id, world.mv, STRATEGY, 4)
    assert not {i.item_id for i in picked.items} & tests
    with pytest.raises(NothingToSelectError, match="test set"):  # 3 + 5 + 4 of 12: nothing left to draw
        _draw(world, 50)


def test_place_tests_puts_test_tasks_at_the_rules_positions_in_draw_order() -> None:
    ranks = {10: 1, 11: 0, 12: 2}
    order = [1, 10, 2, 3, 11, 4, 5, 12]
    assert place_tests(order, ranks, 1, int) == [11, 10, 12, 1, 2, 3, 4, 5]
    assert place_tests(order, ranks, 3, int) == [11, 1, 2, 10, 3, 4, 12, 5]
    assert place_tests([10, 11, 12], ranks, 3, int) == [11, 10, 12]  # only test tasks: all of them, in order
    assert place_tests([1, 2], ranks, 2, int) == [1, 2]


def test_test_tasks_are_marked_and_served_by_the_rule_through_push_and_reprioritize(world: World) -> None:
    project = world.project()
    pid = project.record.project_id
    world.select(project, world.item_ids[:4])
    world.push(project)
    _draw(world, 3, push_to=project.record.id)
    tests = list(world.store.selections.test_items())
    report = world.push(project, test_set_every=2)
    assert report.pushed == 3
    by_item = {world.store.items.by_content([t["data"]["curation_id"]])[t["data"]["curation_id"]]: t for t in
               world.ls.project_tasks(pid)}  # fmt: skip
    for item, task in by_item.items():  # the Data Manager column and the task's meta
        marked = item in tests
        assert (task["data"].get("curate_set") == "test") is marked
        assert (task["meta"].get("curate_set") == "test") is marked
    served = [next(i for i, t in by_item.items() if t["id"] == task) for task in world.served(pid)]
    # positions 1, 3, 5 are test tasks in draw order; the selection keeps its order in between
    assert served == [tests[0], world.item_ids[0], tests[1], world.item_ids[1], tests[2], *world.item_ids[2:4]]
    # a re-rank by the strategy keeps the rule (the strategy orders only the selected tasks)
    ranked = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg.model_copy(update={"test_set_every": 1}),
        STRATEGY, pool_path=None, force=True,
    )  # fmt: skip
    assert ranked.changed
    served = [next(i for i, t in by_item.items() if t["id"] == task) for task in world.served(pid)]
    assert served[:3] == tests and set(served[3:]) == set(world.item_ids[:4])


def test_test_labels_are_evaluation_only_and_exported_as_split_test(world: World, tmp_path: Path) -> None:
    project = world.project()
    pid = project.record.project_id
    world.select(project, world.item_ids[:3])
    _draw(world, 2, push_to=project.record.id)
    world.push(project)
    for task in world.ls.project_tasks(pid):
        world.ls.annotate(task["id"], CHOICE)
    pull(world.store, world.ls, world.cfg.project)
    examples = labeled_examples(world.store, "classify", "latest")
    tests = world.store.selections.test_items()
    train, test = split_test(examples, tests)
    assert [e.item_id for e in test] == list(tests) and len(train) == 3
    assert not {e.item_id for e in train} & set(tests)


def test_test_selections_are_recorded_and_read_back_in_draw_order_on_both_databases(db_url: str) -> None:
    from store import Store
    from store.records import ScannedFile

    store = Store.open(db_url)
    try:
        pool_id = store.pools.get_or_create("/pool", "directory", "/pool")
        store.pools.apply_scan(pool_id, [ScannedFile(f"{i}.jpg", 1, 1, f"{i:032x}") for i in range(6)], [])
        ids = [store.pools.known_paths(pool_id)[f"{i}.jpg"].item_id for i in range(6)]
        mv = store.models.register(
            version="m",
            source="m.pt",
            format="ultralytics",
            task="classify",
            class_names=["a"],
            imgsz=32,
            embedding_dim=None,
        )

        def record(items: list[int], purpose: str) -> int:
            return store.selections.record(
                pool_id=pool_id, model_version_id=mv.id, strategy="s", options={}, budget=len(items),
                item_ids=items, scores=[0.0] * len(items), purpose=purpose,
            )  # fmt: skip

        record(ids[:2], "active")
        first = record([ids[4], ids[2]], "test")
        record([ids[3]], "test")
        assert store.selections.test_items() == {ids[4]: 0, ids[2]: 1, ids[3]: 2}
        assert [d["id"] for d in store.selections.test_selections()] == [first, first + 1]
        with pytest.raises(ValueError, match="purpose"):
            record([ids[5]], "train")
    finally:
        store.close()


def test_a_draw_made_without_push_is_queued_by_the_next_draw_with_push(world: World) -> None:
    from curation.config import Settings
    from curation.jobs.testset import top_up

    _draw(world, 3)  # curate testset draw --no-push: recorded, meant for no project
    project = world.project()
    assert not world.store.label_studio.pending(project.record.id)
    settings = Settings(label_studio=world.cfg, strategy=STRATEGY, train=TrainSettings(test_set_size=3))
    scored = type("Scored", (), {"pool_id": world.pool_id, "model": world.mv})()
    report = top_up(world.store, settings, scored, world.ls)
    assert report.drawn == 0 and report.push is not None and report.push["pushed"] == 3
    assert report.queued == 3 and report.labeled == 0
    again = top_up(world.store, settings, scored, world.ls)
    assert again.push is None and len(world.ls.project_tasks(project.record.id)) == 3


def test_an_ls_pools_test_set_marks_existing_untouched_tasks_and_creates_none(world: World) -> None:
    # the project's own tasks as the pool (what an ls:// scan leaves): each item linked to a task curate did not make
    project = world.project()
    pid = project.record.project_id
    tasks = {i: world.ls.add_task(pid, {"image": f"/data/local-files/?d=pool/{k}.jpg"}) for k, i in
             enumerate(world.item_ids)}  # fmt: skip
    rows = [
        {"item_id": i, "task_id": t, "position": None, "cluster": None, "selection_id": None} for i, t in tasks.items()
    ]
    world.store.label_studio.record_tasks(project.record.id, rows)
    world.ls.annotate(tasks[world.item_ids[0]], CHOICE)  # labeled before the draw: never drawn
    world.ls.annotate(tasks[world.item_ids[1]], [], cancelled=True)  # skipped: has an annotation, never drawn
    pull(world.store, world.ls, world.cfg.project)
    world.ls.calls.clear()

    def draw() -> TestSetReport:
        untouched = world.store.label_studio.untouched(project.record.id)
        return draw_test_set(
            world.store, world.pool_id, world.mv, 3, STRATEGY, seed=0, among=list(untouched),
            before_record=lambda chosen: mark_test_tasks(world.ls, [untouched[i] for i in chosen]),
        )  # fmt: skip

    report = draw()
    assert report.drawn == 3 and report.eligible == len(world.item_ids) - 2
    tests = list(world.store.selections.test_items())
    assert not set(tests) & set(world.item_ids[:2])
    assert "import_tasks" not in world.ls.calls and len(world.ls.project_tasks(pid)) == len(world.item_ids)
    for k, i in enumerate(world.item_ids):
        task = world.ls.tasks[tasks[i]]
        marked = i in tests
        assert task["data"]["image"] == f"/data/local-files/?d=pool/{k}.jpg"  # the image reference is kept
        assert (task["data"].get("curate_set") == "test") is marked and (
            task["meta"].get("curate_set") == "test"
        ) is marked
    assert world.ls.calls.count("update_task") == 3
    again = draw()  # a rerun draws none more, and writes no task
    assert again.drawn == 0 and again.size == 3 and world.ls.calls.count("update_task") == 3
    assert mark_test_tasks(world.ls, [tasks[i] for i in tests]) == 0  # marked already: left alone

    # the queue rule places them among the strategy's ranking (the grown test set re-ranks the same queue)
    ranked = reprioritize(
        world.store, world.ls, world.mv, world.pool_id, world.cfg.model_copy(update={"test_set_every": 2}),
        STRATEGY, pool_path=None,
    )  # fmt: skip
    assert ranked.changed
    by_task = {t: i for i, t in tasks.items()}
    served = [by_task[t] for t in world.served(pid)]
    assert served[0:6:2] == tests and not set(served[1:6:2]) & set(tests)

    # their labels are evaluation-only
    for i in [*tests, served[1]]:
        world.ls.annotate(tasks[i], CHOICE)
    pull(world.store, world.ls, world.cfg.project)
    train, test = split_test(labeled_examples(world.store, "classify", "latest"), world.store.selections.test_items())
    assert [e.item_id for e in test] == tests and not {e.item_id for e in train} & set(tests) and train
