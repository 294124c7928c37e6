"""What one scoring run did, kept apart from the engine so that a run with nothing to score never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from store.records import ModelVersionRecord


@dataclass
class ScoringReport:
    todo: int = 0
    scored: int = 0
    failed: int = 0
    invalid: int = 0
    seconds: float = 0.0
    run_id: int | None = None
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    retry_later: int = 0  # unreadable this time (gone, no permission, I/O error): not marked failed
    device: str | None = None  # scoring.engine ray: the actors' pool, e.g. "ray:2xcpu"
    nodes: list[str] = field(default_factory=list)  # scoring.engine ray: the Ray node ids that decoded or inferred
    # seconds from the start until the engine's first batch of results arrived: its start-up (decoding workers;
    # on Ray the actors' model loads) plus one batch — what a bigger pool does not pay again
    first_batch_s: float | None = None
    duplicates: int = 0  # object-store items found, when read, to hold content the database already had

    @property
    def images_per_s(self) -> float:
        done = self.scored + self.invalid + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EmbeddingReport:
    """What the image encoder (``embedding.model``) did in one ``curate score``: its version, and how many of
    the pool's readable items it embedded now; ``device`` None means nothing was missing (nothing loaded)."""

    version: str
    model: ModelVersionRecord | None = None  # the encoder's registry record; None: never registered (no item yet)
    todo: int = 0
    embedded: int = 0
    failed: int = 0
    invalid: int = 0  # non-finite vectors, left out (the item is then not selectable while the encoder is set)
    retry_later: int = 0
    seconds: float = 0.0
    device: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "model_version": self.version,
            "device": self.device,
            "embedded": self.embedded,
            "failed": self.failed,
            "invalid": self.invalid,
            "retry_later": self.retry_later,
            "seconds": round(self.seconds, 3),
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }
