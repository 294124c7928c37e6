"""curate from Python: the documented entry points, in one place (README, "Using curate from Python").

Every job takes ``(store, settings, ...)``: build the settings once with ``load_settings`` (the same layers as the
CLI: overrides > ``CURATE_*`` environment > config file > defaults), open the store, call jobs::

    from curation import api

    settings = api.load_settings(overrides={"pool.path": "images/", "model.path": "best.pt"})
    with api.open_store(settings) as store, api.run_lock(store):
        api.score(store, settings)
        ranked = api.ranked_scores(store, settings)  # numpy arrays, most uncertain first

Importing this module is light (no torch): the jobs that run a model or talk to Label Studio (``score``,
``select``, ``push``, ``reprioritize``, ``pull``, ``train``, ``loop``) are imported on first use. Errors are typed:
``CurateError`` subclasses carry the CLI's ``exit_code``; ``exit_code_for`` maps the store's errors too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from curation.config import Settings, load_settings
from curation.errors import ConfigError, CurateError, exit_code_for
from curation.jobs.common import open_store, run_lock
from curation.jobs.ranking import RankedScores, ranked_scores
from curation.jobs.status import status

if TYPE_CHECKING:
    from curation.jobs.loop import loop
    from curation.jobs.pull import pull
    from curation.jobs.queue import push, reprioritize
    from curation.jobs.score import ScoreOutcome, score
    from curation.jobs.select import SelectOutcome, select
    from curation.jobs.train import train

__all__ = [
    "ConfigError",
    "CurateError",
    "RankedScores",
    "ScoreOutcome",
    "SelectOutcome",
    "Settings",
    "exit_code_for",
    "load_settings",
    "loop",
    "open_store",
    "pull",
    "push",
    "ranked_scores",
    "reprioritize",
    "run_lock",
    "score",
    "select",
    "status",
    "train",
]

# name -> module that defines it; imported on first attribute access (PEP 562), so ``import curation.api`` stays light.
_LAZY = {
    "score": "curation.jobs.score",
    "ScoreOutcome": "curation.jobs.score",
    "select": "curation.jobs.select",
    "SelectOutcome": "curation.jobs.select",
    "push": "curation.jobs.queue",
    "reprioritize": "curation.jobs.queue",
    "pull": "curation.jobs.pull",
    "train": "curation.jobs.train",
    "loop": "curation.jobs.loop",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
