"""Every record the store reads or writes: plain frozen dataclasses (and one chunk builder), no SQL, no behaviour
that needs a database. Arrays are numpy; ``store.blobs`` turns them into the stored bytes and back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

# -- pools and items ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownPath:
    item_id: int
    size: int
    mtime_ns: int
    etag: str | None = None


# The content id of an object-store item that was listed but not read yet. Its real content id (the SHA-256 of its
# bytes) is computed during the one read that scoring needs, and the item is then renamed to it, or merged into the
# item that already has that content (``store.pools.resolve_pending``).
PENDING_PREFIX = "pending:"


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    content_id: str
    width: int | None = None  # from the header (EXIF-oriented), if readable
    height: int | None = None
    etag: str | None = None  # object-store pools: the object's ETag when it was read


@dataclass(frozen=True)
class ItemToScore:
    item_id: int
    path: str
    width: int | None
    height: int | None
    content_id: str | None = None  # PENDING_PREFIX…: an object listed but not read yet (see ``store.pools``)


# -- model versions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    version: str
    source: str
    format: str
    task: str
    class_names: list[str]
    imgsz: int
    embedding_dim: int | None
    created_at: datetime
    digest: str | None = None
    weights_path: str | None = None
    parent_id: int | None = None
    status: str = "external"
    metric_name: str | None = None
    metric_value: float | None = None
    metrics: dict[str, Any] | None = None
    dataset_hash: str | None = None
    n_labeled: int | None = None
    note: str | None = None
    trained_at: datetime | None = None


@dataclass(frozen=True)
class TrainedModel:
    """Everything a trained model version is registered with, in one transaction."""

    version: str
    weights_path: str
    digest: str
    format: str
    task: str
    class_names: list[str]
    imgsz: int
    parent_id: int | None
    metric_name: str
    metric_value: float
    metrics: dict[str, Any]
    dataset_hash: str
    n_labeled: int
    note: str
    examples: Sequence[tuple[LabeledExample, str]] = ()  # what it was trained and validated on, with the split
    base_examples: Sequence[tuple[LabeledExample, str]] = ()  # train.base_dataset images it replayed (not items)


# -- scoring -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredItem:
    """One model output to store. Classification fills ``probs``; detection and segmentation fill the box arrays
    (and ``polygons``). ``problem`` marks the output invalid (stored, never selected). The ``embedding`` of an invalid
    output, or one that is not finite once stored (``store.blobs.EMBEDDING``), is left out: a NaN would poison every
    distance it enters."""

    item_id: int
    width: int
    height: int
    problem: str | None = None
    probs: NDArray[np.floating[Any]] | None = None  # (K,)
    boxes: NDArray[np.floating[Any]] | None = None  # (n, 4) xyxy pixels
    box_conf: NDArray[np.floating[Any]] | None = None  # (n,)
    box_scores: NDArray[np.floating[Any]] | None = None  # (n, K)
    polygons: Sequence[NDArray[np.floating[Any]]] | None = None  # n arrays of (m, 2) points
    embedding: NDArray[np.floating[Any]] | None = None  # (D,)
    phash: int | None = None  # the image's 64-bit perceptual hash (unsigned), model-independent: kept per item


@dataclass
class ScoredChunk:
    """One chunk of scoring output, written in one transaction: model outputs and files that failed to decode."""

    scored: list[ScoredItem] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # item id, reason
    # pending item id -> the content id its bytes hashed to when scoring read them (resolved before the rest is
    # written, in the same transaction: see ``store.pools.resolve_pending``)
    resolved: dict[int, str] = field(default_factory=dict)

    @property
    def n_invalid(self) -> int:
        return sum(s.problem is not None for s in self.scored)

    @property
    def n_valid(self) -> int:
        return len(self.scored) - self.n_invalid

    def __len__(self) -> int:
        return len(self.scored) + len(self.failures)


@dataclass(frozen=True)
class ClassificationScores:
    item_ids: NDArray[np.int64]
    probs: NDArray[np.float32]  # (N, K)


@dataclass(frozen=True)
class DetectionScores:
    item_ids: NDArray[np.int64]
    n_boxes: NDArray[np.int64]  # (N,)
    box_conf: NDArray[np.float32]  # (B,)
    box_scores: NDArray[np.float32]  # (B, K)

    @property
    def box_image_index(self) -> NDArray[np.int64]:
        """Row of the image each box belongs to (aligned with ``item_ids``)."""
        return np.repeat(np.arange(len(self.item_ids), dtype=np.int64), self.n_boxes)


@dataclass(frozen=True)
class StoredPrediction:
    item_id: int
    width: int
    height: int
    probs: NDArray[np.float32] | None
    boxes: NDArray[np.float32]  # (n, 4) xyxy pixels
    box_conf: NDArray[np.float32]
    box_scores: NDArray[np.float32]  # (n, K)
    polygons: list[NDArray[np.float32]]


# -- selections --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectedItem:
    item_id: int
    content_id: str
    path: str
    rank: int
    score: float
    cluster: int | None


# -- labels ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabeledExample:
    item_id: int
    content_id: str
    path: str  # absolute
    labels: dict[str, Any]
    width: int | None
    height: int | None
    source: str | None = None  # where the label came from: a Label Studio project URL, or an imported file
    annotator: str | None = None
    annotated_at: datetime | None = None
    ground_truth: bool = False  # Label Studio's ground-truth flag on the annotation
    pool_root: str | None = None  # the root of the pool ``path`` was found in (s3://..., ls://... or a folder)
    unchanged_prediction: bool = False  # the model's pre-annotation, submitted unchanged


@dataclass(frozen=True)
class ImportedLabel:
    item_id: int
    labels: dict[str, Any]
    source: str
    annotator: str | None = None
    annotated_at: datetime | None = None


# -- Label Studio ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LSProjectRecord:
    id: int
    server: str
    project_id: int
    title: str
    task: str
    active_tag: str | None
    ranking_signature: str | None
    pulled_until: str | None


@dataclass(frozen=True)
class QueuedTask:
    item_id: int
    content_id: str
    task_id: int
    position: int | None
    cluster: int | None


@dataclass(frozen=True)
class RecordedTask:
    """Which task this database recorded for an item, and the task's status here."""

    item_id: int
    task_id: int
    status: str


@dataclass(frozen=True)
class PushIntent:
    """An import whose outcome is not recorded yet: its items, and when it was sent (timezone-aware UTC)."""

    id: int
    content_ids: list[str]
    created_at: datetime


@dataclass(frozen=True)
class PendingItem:
    """A selected item not yet in the project."""

    item_id: int
    content_id: str
    path: str
    pool_root: str | None
    selection_id: int
    rank: int
    score: float
    cluster: int | None
    strategy: str
    purpose: str = "active"  # "test": a test-set item (marked so in its task)


@dataclass(frozen=True)
class PulledAnnotation:
    annotation_id: int
    task_id: int
    item_id: int
    was_cancelled: bool
    annotator: str | None
    lead_time: float | None
    labels: dict[str, Any]
    result: list[Any]
    created_at: datetime | None
    updated_at: datetime | None
    ground_truth: bool = False
    unchanged_prediction: bool = False  # the model's pre-annotation submitted as it was


@dataclass
class PullCounts:
    """What one page of a pull changed."""

    new_annotations: int = 0
    labeled_tasks: int = 0
    """Tasks that became labeled with this page (not those re-read)."""
    skipped_tasks: int = 0
    """Tasks that became skipped with this page."""
    deleted_annotations: int = 0
    """Stored annotations that were deleted in Label Studio (forgotten here)."""
    unchanged_predictions: int = 0
    """New finished annotations that are the model's pre-annotation submitted unchanged."""
