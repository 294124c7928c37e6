"""``curate train``: fine-tune the current model on the labeled items; promote only if better."""

from __future__ import annotations

import os
from pathlib import Path

from curation.config import Settings
from curation.errors import CurateError
from curation.jobs.common import current_or_fail
from curation.jobs.model import load_runtime, register_model
from curation.jobs.remote import remote_bytes
from curation.progress import Progress
from curation.training.resolve import labeled_examples
from curation.training.round import TrainReport, models_dir, train_round
from store import Store
from store.records import LabeledExample, ModelVersionRecord


def train(store: Store, settings: Settings, *, progress: Progress | None = None) -> TrainReport:
    """Fine-tune the current model (or ``--model``'s version) on the labeled items; promote only if better."""
    if settings.model.path:
        runtime = load_runtime(settings, store)
        base = register_model(store, runtime)
    else:
        base = current_or_fail(store)
    return fine_tune(store, settings, base, progress=progress)


def fine_tune(
    store: Store,
    settings: Settings,
    current: ModelVersionRecord,
    *,
    examples: list[LabeledExample] | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """One training round from ``current``, logged to MLflow when it is configured (a failed MLflow log is a
    warning: the version is registered already)."""
    if examples is None:
        examples = labeled_examples(store, current.task, settings.pull.resolve, settings.pull.unchanged_predictions)
    report = train_round(
        store,
        current,
        settings.train,
        models_dir(settings.train, settings.db),
        examples=examples,
        progress=progress,
        fetch=remote_bytes(settings),
    )
    if report.trained and report.weights and (settings.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        from curation.integrations.mlflow import log_training

        try:
            report.mlflow_run = log_training(settings, report, Path(report.weights), current.version)
        except CurateError as exc:
            report.warnings.append(str(exc))
    return report
