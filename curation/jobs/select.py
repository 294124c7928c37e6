"""``curate select``: score what is unscored, select a budget, write it out, push it to Label Studio."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import Settings
from curation.jobs.score import ScoreOutcome, score
from curation.labelstudio.project import connect, open_project
from curation.labelstudio.push import push as push_queue
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
    if out is not None:
        check_selection_out(out)  # a selection uses its items up: never record one whose file cannot be written
    ls = None
    if push:
        ls = connect(settings.label_studio)
    scored = score(store, settings, rescore=rescore, progress=progress)
    project = open_project(store, ls, scored.model, settings.label_studio.project) if ls is not None else None
    result = run_selection(
        store,
        scored.pool_id,
        scored.model,
        settings.strategy,
        budget,
        push_to=project.record.id if project is not None else None,
    )
    rows = selection_rows(result, str(scored.pool.root))
    if out is not None:
        write_selection(out, rows)
    outcome = SelectOutcome(scored, result, rows, out)
    if ls is not None and project is not None:
        report = push_queue(
            store,
            ls,
            scored.model,
            project,
            settings.label_studio,
            settings.strategy,
            pool_path=settings.pool.path,
            progress=progress,
            s3=settings.pool.s3,  # the pool.s3.* keys, not only the AWS environment, reach the project's storage
        )
        outcome.extra["push"] = report.summary()
    return outcome
