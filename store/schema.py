"""Tables. The Alembic migrations in ``store/migrations`` create exactly these; a test checks they agree.

Arrays (probabilities, boxes, embeddings) are stored as little-endian binary blobs, one row per item and model
version; ``store.blobs`` is the one module that writes and reads them and documents their layouts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Pool(Base):
    """A directory or manifest that items were found in."""

    __tablename__ = "pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    location: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "directory" | "manifest"
    root: Mapped[str] = mapped_column(Text)  # directory that relative paths are relative to
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scanned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Item(Base):
    """One distinct image content. Identical files share one item; the content id is stable across moves."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_id: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | ok | failed | pending (see PENDING_PREFIX)
    failure: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    phash: Mapped[int | None] = mapped_column(BigInteger)
    """The 64-bit perceptual hash of the decoded image (``curation.scoring.images.perceptual_hash``), stored as a
    signed 64-bit integer (``store.items.to_signed``); NULL until the item is decoded by a scoring run."""


class ItemPath(Base):
    """Where an item was seen. ``size``/``mtime_ns`` let a rescan skip hashing unchanged files; paths that
    disappear from the pool are deleted, so a path row always means "present at the last scan"."""

    __tablename__ = "item_paths"
    __table_args__ = (UniqueConstraint("pool_id", "path"), Index("ix_item_paths_item", "item_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # object-store pools: the object's ETag (same key, size and ETag: not read again) and the scan that last listed
    # it (paths a complete listing did not mark are gone); NULL for local files
    etag: Mapped[str | None] = mapped_column(String(256))
    scan_mark: Mapped[int | None] = mapped_column(BigInteger)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(16))
    class_names: Mapped[list[Any]] = mapped_column(JSON)
    imgsz: Mapped[int] = mapped_column(Integer)
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the model registry (filled for models curate trained, and for the first model a database used)
    digest: Mapped[str | None] = mapped_column(String(64), index=True)
    weights_path: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="external", server_default="external")
    """external (used, not trained here) | candidate | current | retired | encoder (an ``embedding.model``: embeddings
    only, never a scoring model; ``store.models``)"""
    metric_name: Mapped[str | None] = mapped_column(String(32))
    metric_value: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    n_labeled: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    trained_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Split(Base):
    """Train/validation assignment of a labeled item; assigned once and never changed, so the held-out set
    stays held out across training rounds and candidates are compared on the same items."""

    __tablename__ = "splits"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))  # train | val
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingExample(Base):
    """One labeled item a trained model version was fine-tuned (or validated) on, as it was then: its split and a
    copy of its labels (an annotation edited later in Label Studio does not change what trained the version), so
    ``curate export --model-version`` writes exactly that dataset again and reproduces its hash."""

    __tablename__ = "training_examples"
    __table_args__ = (Index("ix_training_examples_model_version", "model_version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(8))  # train | val
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(Text)  # where the label came from (a Label Studio project)
    annotator: Mapped[str | None] = mapped_column(Text)
    annotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrainingBaseExample(Base):
    """One ``train.base_dataset`` image a trained version replayed: not a pool item (never scored or selected), so
    it is kept by content id and path, with a copy of its labels as they were."""

    __tablename__ = "training_base_examples"
    __table_args__ = (Index("ix_training_base_examples_model_version", "model_version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    content_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    split: Mapped[str] = mapped_column(String(8))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)


class Setting(Base):
    """Small named values the database keeps (the current model version)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LockHolder(Base):
    """Who holds the run lock (Postgres; the lock itself is an advisory lock released when its session ends)."""

    __tablename__ = "lock_holders"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Text)
    command: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScoringRun(Base):
    __tablename__ = "scoring_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|completed|interrupted|failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    n_todo: Mapped[int] = mapped_column(Integer, default=0)
    n_scored: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_invalid: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(32))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    images_per_s: Mapped[float | None] = mapped_column(Float)


class Prediction(Base):
    """The model's output for one item under one model version (blob layouts: ``store.blobs``)."""

    __tablename__ = "predictions"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16))  # ok | invalid
    problem: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    probs: Mapped[bytes | None] = mapped_column(LargeBinary)
    n_boxes: Mapped[int] = mapped_column(Integer, default=0)
    boxes: Mapped[bytes | None] = mapped_column(LargeBinary)
    box_conf: Mapped[bytes | None] = mapped_column(LargeBinary)
    box_scores: Mapped[bytes | None] = mapped_column(LargeBinary)
    polygons: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Embedding(Base):
    __tablename__ = "embeddings"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Selection(Base):
    __tablename__ = "selections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="SET NULL"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    strategy: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    budget: Mapped[int] = mapped_column(Integer)
    n_selected: Mapped[int] = mapped_column(Integer)
    push: Mapped[bool] = mapped_column(default=False, server_default=false())
    """The selection is meant for Label Studio: items not yet in the project are pushed by the next push."""
    push_ls_project_id: Mapped[int | None] = mapped_column(ForeignKey("ls_projects.id", ondelete="SET NULL"))
    """The project it is meant for (NULL with ``push``: any project; selections made before 0004)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    purpose: Mapped[str] = mapped_column(String(8), default="active", server_default="active")
    """active (chosen by the strategy, for training) | test (a uniform random draw: evaluation only, never
    trained on; see ``curation.training.testset``)."""


class SelectionItem(Base):
    __tablename__ = "selection_items"
    __table_args__ = (Index("ix_selection_items_item", "item_id"),)
    selection_id: Mapped[int] = mapped_column(ForeignKey("selections.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    cluster: Mapped[int | None] = mapped_column(Integer)


class LSProject(Base):
    """A Label Studio project curate pushes to. ``active_tag`` is the prediction model_version the project's
    label stream currently ranks by (curate's latest ranking)."""

    __tablename__ = "ls_projects"
    __table_args__ = (UniqueConstraint("server", "project_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server: Mapped[str] = mapped_column(Text)  # base URL, never a token
    project_id: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(16))
    active_tag: Mapped[str | None] = mapped_column(String(200))
    ranking_signature: Mapped[str | None] = mapped_column(String(64))
    pulled_until: Mapped[str | None] = mapped_column(String(40))  # Label Studio updated_at watermark
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LSTask(Base):
    """One item's task in one project. ``position`` is its place in curate's queue (1 = served next)."""

    __tablename__ = "ls_tasks"
    __table_args__ = (
        UniqueConstraint("ls_project_id", "item_id"),
        UniqueConstraint("ls_project_id", "task_id"),
        Index("ix_ls_tasks_item", "item_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_project_id: Mapped[int] = mapped_column(ForeignKey("ls_projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | labeled | skipped | deleted
    position: Mapped[int | None] = mapped_column(Integer)
    cluster: Mapped[int | None] = mapped_column(Integer)
    selection_id: Mapped[int | None] = mapped_column(ForeignKey("selections.id", ondelete="SET NULL"))
    pushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prediction_kept: Mapped[bool] = mapped_column(default=False, server_default=true())
    """Whether the prediction the task was labeled with was copied under its model version (curate's ranking
    predictions are deleted when superseded); False until then."""


class LSPushIntent(Base):
    """Items about to be imported. A row that survives a run means the import's outcome is unknown (killed
    process, proxy error after the server committed): the next push reconciles these items by curation_id."""

    __tablename__ = "ls_push_intents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_project_id: Mapped[int] = mapped_column(ForeignKey("ls_projects.id", ondelete="CASCADE"))
    content_ids: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Annotation(Base):
    """A finished (or skipped) annotation pulled from Label Studio, normalised per task type in ``labels``; or a
    label imported by ``curate labels import`` (no project, ``annotation_id``/``task_id`` 0, ``source`` the file)."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("ls_project_id", "annotation_id"), Index("ix_annotations_item", "item_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_project_id: Mapped[int | None] = mapped_column(ForeignKey("ls_projects.id", ondelete="CASCADE"))
    source: Mapped[str | None] = mapped_column(Text)  # an imported label's dataset or export file
    ground_truth: Mapped[bool] = mapped_column(default=False, server_default=false())  # Label Studio's flag
    # the model's pre-annotation submitted as it was (Label Studio's parent_prediction, the same labels)
    unchanged_prediction: Mapped[bool] = mapped_column(default=False, server_default=false())
    annotation_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    was_cancelled: Mapped[bool] = mapped_column(default=False)
    annotator: Mapped[str | None] = mapped_column(Text)
    lead_time: Mapped[float | None] = mapped_column(Float)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
