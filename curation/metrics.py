"""Prometheus metrics (prometheus-client, never hand-formatted): what ``curate serve`` exposes at ``/metrics`` and
what ``score``/``select``/``reprioritize``/``loop`` write to a textfile for node_exporter's textfile collector.

Both show the same state gauges, read from the store (``curation.jobs.status.store_state``): queue length,
labeled items, labels since the last training, the current model's metric. A run adds its own outcome: items
scored by outcome and img/s, its duration and last success time per command, errors by kind. The textfile is
written atomically (a temporary file renamed over it) and keeps what earlier runs of *other* commands wrote, so
one file serves every command; counters (``*_total``) carry on from the file's values. No label or value ever
holds a secret: only counts, times, model versions and command names.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SCORE_OUTCOMES = ("scored", "failed", "invalid", "retry_later")


class StateCollector(Collector):
    """The store's state as gauges, read when collected (``state`` returns ``store_state``'s dict, or None)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        if not state:
            return []
        return list(state_families(state))


def state_families(state: Mapping[str, Any]) -> Iterable[Metric]:
    simple = {
        "curate_pool_items": ("Distinct images known to the database", state.get("items")),
        "curate_scored_items": ("Items the current model has scored", state.get("scored")),
        "curate_unscored_items": ("Items the current model has not scored", state.get("unscored")),
        "curate_queue_length": ("Queued, unlabeled Label Studio tasks", state.get("queued")),
        "curate_labeled_items": ("Items with a finished annotation", state.get("labeled")),
        "curate_labels_since_training": (
            "Labeled items not yet used by a training round",
            state.get("labels_since_training"),
        ),
    }
    for name, (doc, value) in simple.items():
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=float(value))
    if state.get("model_version") and state.get("metric_value") is not None:
        family = GaugeMetricFamily(
            "curate_model_metric",
            "The current model's metric on the held-out split",
            labels=["model_version", "metric"],
        )
        family.add_metric([str(state["model_version"]), str(state.get("metric_name") or "")], state["metric_value"])
        yield family


class ServerMetrics:
    """The metrics of one ``curate serve`` process."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "curate_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.predict_tasks = Counter(
            "curate_serve_predict_tasks",
            "Tasks answered by /predict, by where the answer came from",
            ["source"],
            registry=self.registry,
        )
        self.items_scored = Counter(
            "curate_items_scored", "Images scored, by outcome", ["outcome"], registry=self.registry
        )
        self.turns = Counter("curate_serve_turns", "Loop turns run for webhooks", ["outcome"], registry=self.registry)
        self.turn_running = Gauge("curate_serve_turn_running", "1 while a loop turn runs", registry=self.registry)
        self.turn_pending = Gauge(
            "curate_serve_turn_pending", "1 while a loop turn is scheduled", registry=self.registry
        )
        self.duration = Gauge(
            "curate_run_duration_seconds", "Duration of the last run", ["command"], registry=self.registry
        )
        self.last_success = Gauge(
            "curate_last_success_timestamp_seconds",
            "Unix time of the last successful run",
            ["command"],
            registry=self.registry,
        )
        self.errors = Counter("curate_errors", "Errors, by kind", ["kind"], registry=self.registry)
        self.registry.register(StateCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def run_registry(
    command: str,
    *,
    seconds: float,
    ok: bool,
    error_kind: str | None = None,
    scoring: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    previous: str = "",
    now: float | None = None,
) -> CollectorRegistry:
    """The registry a run writes to the textfile: its own outcome, the store's state, and what ``previous`` (the
    file's former text) holds for other commands; counters continue from their previous values."""
    registry = CollectorRegistry()
    old = _samples(previous)
    duration = Gauge("curate_run_duration_seconds", "Duration of the last run", ["command"], registry=registry)
    last_success = Gauge(
        "curate_last_success_timestamp_seconds", "Unix time of the last successful run", ["command"], registry=registry
    )
    last_run = Gauge("curate_last_run_timestamp_seconds", "Unix time of the last run", ["command"], registry=registry)
    for gauge, name in (
        (duration, "curate_run_duration_seconds"),
        (last_success, "curate_last_success_timestamp_seconds"),
        (last_run, "curate_last_run_timestamp_seconds"),
    ):
        for labels, value in old.get(name, {}).items():
            if dict(labels).get("command") != command:
                gauge.labels(**dict(labels)).set(value)
    stamp = time.time() if now is None else now
    duration.labels(command=command).set(seconds)
    last_run.labels(command=command).set(stamp)
    if ok:
        last_success.labels(command=command).set(stamp)
    else:
        previous_success = old.get("curate_last_success_timestamp_seconds", {}).get((("command", command),))
        if previous_success is not None:
            last_success.labels(command=command).set(previous_success)

    scored = Counter("curate_items_scored", "Images scored, by outcome", ["outcome"], registry=registry)
    for outcome in SCORE_OUTCOMES:
        before = old.get("curate_items_scored_total", {}).get((("outcome", outcome),), 0.0)
        now_value = float((scoring or {}).get(outcome) or 0)
        scored.labels(outcome=outcome).inc(before + now_value)
    rate = Gauge("curate_scoring_images_per_second", "Throughput of the last run that scored images", registry=registry)
    if scoring and (scoring.get("scored") or scoring.get("failed")):
        rate.set(float(scoring.get("images_per_s") or 0.0))
    else:
        for value in old.get("curate_scoring_images_per_second", {}).values():
            rate.set(value)

    errors = Counter("curate_errors", "Errors, by kind", ["kind"], registry=registry)
    kinds = {dict(labels).get("kind", ""): value for labels, value in old.get("curate_errors_total", {}).items()}
    if error_kind:
        kinds[error_kind] = kinds.get(error_kind, 0.0) + 1
    for kind, value in kinds.items():
        errors.labels(kind=kind).inc(value)
    if state:
        registry.register(StateCollector(lambda: state))
    return registry


def write_textfile(path: str | Path, command: str, **run: Any) -> None:
    """Write the run's metrics to ``path`` atomically (see ``run_registry`` for ``run``)."""
    target = Path(path).expanduser()
    previous = target.read_text(encoding="utf-8") if target.is_file() else ""
    registry = run_registry(command, previous=previous, **run)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(generate_latest(registry))
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name → sorted label pairs → value, from a metrics text (an unreadable file counts as empty)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = float(sample.value)
    except (ValueError, TypeError):
        return {}
    return out
