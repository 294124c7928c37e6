"""The ranking-tag codec: the ``model_version`` under which curate writes a queue's predictions.

A tag is ``curate-<model version>-<UTC time, microseconds>``: a new one for every ranking, so that switching the
project to it is atomic and the superseded ranking can be deleted afterwards. Only tags this codec parses are
curate's; other model versions in a project (an ML backend's, a user's import) are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

PREFIX = "curate-"
MAX_LENGTH = 190  # Label Studio's model_version column holds more; this leaves room
_STAMP = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class RankingTag:
    model_version: str
    created: datetime


def make_tag(model_version: str, now: datetime | None = None) -> str:
    """A fresh tag for a ranking by ``model_version`` (a very long version is shortened, never the time)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(_STAMP)
    room = MAX_LENGTH - len(PREFIX) - 1 - len(stamp)
    return f"{PREFIX}{model_version[:room]}-{stamp}"


def parse_tag(tag: str | None) -> RankingTag | None:
    """The model version and time of a curate tag; None for any other model_version."""
    if not tag or not tag.startswith(PREFIX):
        return None
    version, sep, stamp = tag[len(PREFIX) :].rpartition("-")
    if not sep or not version or len(stamp) != 22:
        return None
    try:
        created = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return RankingTag(version, created)


def is_ours(tag: str | None) -> bool:
    return parse_tag(tag) is not None
