"""Reports that render themselves: a job's result is a dataclass, and its ``--json`` summary is its fields.

Subclass ``Report`` with a ``@dataclass``; ``summary()`` returns every field in declaration order as JSON-ready
values (nested reports summarised, paths and datetimes as strings, tuples as lists). A field can opt out with
``field(metadata=HIDDEN)`` or ask for rounding with ``field(metadata=rounded(3))``; keys that are computed from
the fields come from ``derived()``. No report writes its summary dict by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

HIDDEN: Mapping[str, Any] = {"summary": False}


def rounded(digits: int) -> Mapping[str, Any]:
    """Field metadata: round this float to ``digits`` in the summary."""
    return {"round": digits}


class Report:
    """Mixin for dataclass reports (see the module docstring)."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.metadata.get("summary", True):
                continue
            value = plain(getattr(self, f.name))
            digits = f.metadata.get("round")
            if digits is not None and isinstance(value, float):
                value = round(value, digits)
            out[f.name] = value
        out.update(self.derived())
        return out

    def derived(self) -> dict[str, Any]:
        """Keys computed from the fields (override); they follow the fields in the summary."""
        return {}


def plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``."""
    if isinstance(value, Report):
        return value.summary()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value
