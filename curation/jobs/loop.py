"""``curate loop``: one turn of the cycle for cron — pull, train, promote, rescore, reprioritize."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import Settings
from curation.errors import ProjectNotFoundError
from curation.faults import checkpoint
from curation.jobs.model import load_runtime, register_model
from curation.jobs.queue import reprioritize
from curation.jobs.score import ScanAhead, with_pool_project
from curation.jobs.testset import top_up
from curation.jobs.train import fine_tune
from curation.labelstudio.project import connect
from curation.labelstudio.pull import pull
from curation.labelstudio.turn import turn_reads
from curation.progress import Progress
from curation.reports import Report, rounded
from curation.training.resolve import labeled_examples
from curation.training.trainer import TrainingError
from store import Store


@dataclass
class LoopReport(Report):
    pulled: dict[str, Any] | None = None
    training_error: str | None = None
    new_labels: int = 0
    training: dict[str, Any] | None = None
    current_model: str | None = None
    scoring: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    test_set: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = field(default=0.0, metadata=rounded(2))


def loop(
    store: Store,
    settings: Settings,
    *,
    min_new_labels: int | None = None,
    queue_size: int | None = None,
    progress: Progress | None = None,
) -> LoopReport:
    """One turn of the cycle, for cron: pull → train if enough new labels → promote if better → rescore with the
    current model → reprioritize and top up the queue → top up the test set (``train.test_set_size``)."""
    import time

    started = time.perf_counter()
    report = LoopReport()
    settings = with_pool_project(settings)  # --pool ls://<project>: the loop works in that project
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-scan") as executor:
        # a local pool is scanned while this process talks to Label Studio (key check, project, pull); a turn
        # that trains scans again afterwards, so that files added during training are scored in this turn
        ahead = ScanAhead(store, settings, executor) if ScanAhead.applies(settings) else None
        ls = turn_reads(connect(settings.label_studio))  # the project is read once for the whole turn
        if settings.model.path:
            existing = store.models.current()
            if existing is None:
                register_model(store, load_runtime(settings, store))  # first run: the configured model is current
            elif Path(settings.model.path).resolve() != Path(existing.source).resolve():
                report.notes.append(
                    f"model.path {settings.model.path} only seeds an empty registry: the loop follows the current "
                    f"model {existing.version} (`curate models promote` changes it)"
                )
        # the loop always follows the registry: a promoted model takes over the queue from the next step on
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"path": None, "version": None})}
        )
        try:
            report.pulled = pull(store, ls, settings.label_studio.project, progress=progress).summary()
        except ProjectNotFoundError as exc:
            report.notes.append(f"nothing pulled: {exc}")
        current = store.models.current()
        threshold = settings.train.min_new_labels if min_new_labels is None else min_new_labels
        examples = (
            labeled_examples(store, current.task, settings.pull.resolve, settings.pull.unchanged_predictions)
            if current
            else []
        )
        last = store.models.latest_trained()
        baseline = last.n_labeled or 0 if last else 0
        report.new_labels = len(examples) - baseline
        if current is not None and report.new_labels >= max(threshold, 1):
            if ahead is not None:
                ahead.result()  # its outcome is superseded by the scan after training; its error is not
                ahead = None
            try:
                outcome = fine_tune(store, settings, current, examples=examples, progress=progress)
            except TrainingError as exc:
                # The queue must still follow the current model: note the failure, finish the turn, and let the
                # CLI exit non-zero so that cron reports it.
                report.training_error = str(exc)
            else:
                report.training = outcome.summary()
                if not outcome.trained:
                    report.notes.append(f"not trained: {outcome.reason}")
        elif current is not None:
            report.notes.append(f"not trained: {report.new_labels} new label(s), {threshold} needed")
        checkpoint("loop-before-rescore")
        scored, ranked = reprioritize(store, settings, queue_size=queue_size, progress=progress, ls=ls, scanned=ahead)
    report.current_model = scored.model.version
    report.scoring = scored.summary()
    report.queue = ranked.summary()
    if settings.train.test_set_size is not None:
        # grown to its size with the current model's scores, and its new tasks placed by the queue rule
        report.test_set = top_up(store, settings, scored, ls, progress=progress).summary()
    report.seconds = time.perf_counter() - started
    return report
