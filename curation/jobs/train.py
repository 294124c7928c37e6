"""``curate train``: fine-tune the current model on the labeled items; promote only if better."""

from __future__ import annotations

from curation.config import Settings
from curation.jobs.common import current_or_fail
from curation.jobs.model import load_runtime, register_model
from curation.progress import Progress
from curation.training.trainer import TrainReport, train_round
from store import Store


def train(store: Store, settings: Settings, *, progress: Progress | None = None) -> TrainReport:
    """Fine-tune the current model (or ``--model``'s version) on the labeled items; promote only if better."""
    if settings.model.path:
        runtime = load_runtime(settings, store)
        base = register_model(store, runtime)
    else:
        base = current_or_fail(store)
    return train_round(store, settings, base, progress=progress)
