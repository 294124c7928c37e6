"""``curate select``: score what is unscored, select a budget, write it out, push it to Label Studio."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import Settings
from curation.errors import ConfigError
from curation.jobs.score import ScoreOutcome, is_ls_pool, score, with_pool_project
from curation.labelstudio.client import LabelStudioAPI
from curation.labelstudio.project import connect, open_project
from curation.labelstudio.push import push_with
from curation.progress import Progress
from curation.selection import (
    SelectionResult,
    build_strategy,
    check_selection_out,
    run_selection,
    selection_rows,
    write_selection,
)
from store import Store
from store.records import SelectedItem


@dataclass
class SelectOutcome:
    score: ScoreOutcome
    selection: SelectionResult
    rows: list[dict[str, Any]]
    out: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "selection_id": self.selection.selection_id,
            "strategy": self.selection.strategy,
            "model_version": self.selection.model_version,
            "budget": self.selection.budget,
            "selected": len(self.rows),
            "available": self.selection.available,
            "out": None if self.out is None else str(self.out),
            "warnings": self.selection.warnings,
            "skipped_duplicates": self.selection.skipped_duplicates,
            "skipped_copies": self.selection.skipped_copies,
            "scoring": self.score.summary(),
            "items": self.rows,
            **self.extra,
        }


def select(
    store: Store,
    settings: Settings,
    *,
    budget: int,
    out: Path | None = None,
    rescore: bool = False,
    push: bool = False,
    progress: Progress | None = None,
) -> SelectOutcome:
    """Score what is unscored, select ``budget`` new items, write them to ``out`` and push them to Label Studio.

    ``out`` is checked (extension, writable folder) before anything else, like the strategy. With ``push``,
    Label Studio is checked (reachable, key accepted, project config matching the model) before
    anything is selected, so a bad token or URL records nothing.
    """
    build_strategy(settings.strategy)  # fail on a bad strategy before spending time on scoring
    settings = with_pool_project(settings)
    ls_pool = is_ls_pool(settings)
    if out is not None:
        check_selection_out(out)  # a selection uses its items up: never record one whose file cannot be written
    if ls_pool and not push:
        raise ConfigError(
            f"--pool {settings.pool.path} ranks the project's own tasks in Label Studio: drop --no-push "
            "(curate score scores them without ranking)"
        )
    ls = None
    if push:
        ls = connect(settings.label_studio)
    scored = score(store, settings, rescore=rescore, progress=progress)
    project = (
        open_project(
            store,
            ls,
            scored.model,
            settings.label_studio.project,
            create=not ls_pool,
            add_labels=settings.train.allow_new_classes,
        )
        if ls is not None
        else None
    )
    if ls_pool and ls is not None:
        return _rank_project(store, ls, scored, settings, budget, out, progress)
    result = run_selection(
        store,
        scored.pool_id,
        scored.model,
        settings.strategy,
        budget,
        push_to=project.record.id if project is not None else None,
        encoder=scored.encoder,
    )
    rows = selection_rows(result, str(scored.pool.root))
    if out is not None:
        write_selection(out, rows)
    outcome = SelectOutcome(scored, result, rows, out)
    if ls is not None and project is not None:
        report = push_with(store, ls, scored.model, project, settings, progress)
        outcome.extra["push"] = report.summary()
    return outcome


def _rank_project(
    store: Store,
    ls: LabelStudioAPI,
    scored: ScoreOutcome,
    settings: Settings,
    budget: int,
    out: Path | None,
    progress: Progress | None,
) -> SelectOutcome:
    """``select`` on an ``ls://`` pool: every unlabeled task of the project is queued already, so the whole queue
    is ranked (predictions under a fresh model_version, the project switched to uncertainty sampling) and the
    first ``budget`` tasks of that order are the selection reported and written to ``out``. No task is created,
    and no selection is recorded (the queue's order is the outcome)."""
    from curation.jobs.queue import rank_queue
    from curation.labelstudio.rank import confidences

    ranked = rank_queue(store, ls, scored, settings, force=True, progress=progress)
    project = open_project(store, ls, scored.model, settings.label_studio.project, create=False)
    queue = store.label_studio.queue(project.record.id, skipped=project.requeues_skipped)
    head = queue[:budget]
    measure = build_strategy(settings.strategy).measure
    conf = confidences(store, settings.strategy, scored.model, [q.item_id for q in head], measure)
    paths = store.items.paths(scored.pool_id, [q.item_id for q in head])
    items = [
        SelectedItem(q.item_id, q.content_id, path, rank, 1.0 - c if c is not None else float("nan"), q.cluster)
        for rank, (q, c, path) in enumerate(zip(head, conf, paths, strict=True), start=1)
    ]
    result = SelectionResult(
        0, ranked.strategy or settings.strategy.name, scored.model.version, budget, len(queue), items
    )
    rows = selection_rows(result, str(scored.pool.root))
    for row, q, c in zip(rows, head, conf, strict=True):
        row["task_id"] = q.task_id
        if c is None:
            row["score"] = None  # no valid model output: ranked last
    if out is not None:
        write_selection(out, rows)
    outcome = SelectOutcome(scored, result, rows, out)
    outcome.extra["ranking"] = ranked.summary()
    return outcome
