"""``curate testset``: draw the test set at random from the pool, queue it in Label Studio, and say where it stands."""

from __future__ import annotations

from curation.config import Settings
from curation.errors import ConfigError
from curation.jobs.score import ScoreOutcome, is_ls_pool, score, with_pool_project
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.pool import mark_test_tasks
from curation.labelstudio.project import connect, open_project
from curation.labelstudio.push import push_with
from curation.progress import Progress
from curation.training.testset import TestSetReport, draw_test_set, target_size
from store import Store


def draw(
    store: Store,
    settings: Settings,
    *,
    size: int | str | None = None,
    push: bool = True,
    progress: Progress | None = None,
) -> TestSetReport:
    """Score what is unscored, grow the test set to ``size`` (else ``train.test_set_size``) and push it (an
    ``ls://`` pool: mark the drawn tasks, which exist already)."""
    settings = with_pool_project(settings)
    if is_ls_pool(settings) and not push:
        raise ConfigError(
            f"--pool {settings.pool.path}: the test set of an ls:// pool is made of the project's own tasks, marked "
            "as it is drawn: drop --no-push"
        )
    wanted = target_size(settings.train, store.models.current(), size)
    if wanted is None:
        raise ConfigError("no test set size: pass --size N (or auto), or set train.test_set_size")
    ls = connect(settings.label_studio) if push else None  # checked before anything is drawn
    scored = score(store, settings, progress=progress)
    return top_up(store, settings, scored, ls, size=wanted, progress=progress)


def top_up(
    store: Store,
    settings: Settings,
    scored: ScoreOutcome,
    ls: LabelStudioAPI | None,
    *,
    size: int | None = None,
    progress: Progress | None = None,
) -> TestSetReport:
    """Grow the test set to ``size`` (else ``train.test_set_size``) from the scored pool, then push whatever of it
    is not a task yet (a draw an earlier run recorded but did not push included)."""
    wanted = size if size is not None else target_size(settings.train, store.models.current())
    # an ls:// pool's own tasks are the pool: the test set is drawn among those nothing touched yet and marked in
    # place (no task is created); any other pool's draw is pushed as new tasks
    in_place = ls is not None and is_ls_pool(settings)
    project = None
    if ls is not None:
        project = open_project(
            store,
            ls,
            scored.model,
            settings.label_studio.project,
            create=not in_place,
            add_labels=settings.train.allow_new_classes,
        )
    untouched = store.label_studio.untouched(project.record.id) if in_place and project is not None else {}

    def mark(chosen: list[int]) -> None:
        assert ls is not None
        mark_test_tasks(ls, [untouched[i] for i in chosen])

    if wanted is None:
        report = TestSetReport(size=len(store.selections.test_items()), target=None, seed=settings.train.seed)
    else:
        report = draw_test_set(
            store,
            scored.pool_id,
            scored.model,
            wanted,
            settings.strategy,
            seed=settings.train.seed,
            push_to=project.record.id if project is not None and not in_place else None,
            among=list(untouched) if in_place else None,
            before_record=mark if in_place else None,
        )
    if ls is not None and project is not None:
        if in_place:
            if report.drawn:  # re-ranked so that the queue rule places them
                from curation.jobs.queue import rank_queue

                report.marked = report.drawn
                report.queue = rank_queue(store, ls, scored, settings).summary()
        else:
            for drawn in store.selections.test_selections():  # a draw made with --no-push is queued now
                if not drawn["push"]:
                    store.selections.mark_for_push(drawn["id"], project.record.id)
            if report.drawn or store.label_studio.pending(project.record.id):
                report.push = push_with(store, ls, scored.model, project, settings, progress).summary()
    _count(store, report)
    return report


def status(store: Store, settings: Settings) -> TestSetReport:
    """The test set's size, target, and how much of it is labeled or queued."""
    wanted = target_size(settings.train, store.models.current())
    report = TestSetReport(size=len(store.selections.test_items()), target=wanted, seed=settings.train.seed)
    _count(store, report)
    return report


def _count(store: Store, report: TestSetReport) -> None:
    items = store.selections.test_items()
    labeled = {int(i) for i in store.labels.item_ids()}
    report.labeled = sum(1 for i in items if i in labeled)
    queued: set[int] = set()
    for project in store.label_studio.projects():
        queued.update(q.item_id for q in store.label_studio.queue(project.id, skipped=True))
    report.queued = sum(1 for i in items if i in queued and i not in labeled)
