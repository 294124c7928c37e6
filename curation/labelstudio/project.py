"""The Label Studio project curate works in: connecting, finding (or creating) it, and its local-files storage.
Reconciling its tasks with this database is ``reconcile``'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.config import LabelStudioSettings, S3Settings
from curation.errors import ConfigError, LabelStudioError, ProjectNotFoundError
from curation.labelstudio.client import UNCERTAINTY_SAMPLING, LabelStudioAPI, LabelStudioClient
from curation.labelstudio.formats import (
    LabelingInterface,
    check_label_config,
    label_config,
    missing_labels,
    with_labels,
)
from store import Store
from store.records import LSProjectRecord, ModelVersionRecord

IGNORE_SKIPPED = "IGNORE_SKIPPED"


def connect(cfg: LabelStudioSettings) -> LabelStudioClient:
    """A client whose server answered and accepted the key: a bad URL or token fails here, before any work."""
    if not cfg.url:
        raise ConfigError("no Label Studio URL: set LABEL_STUDIO_URL (or label_studio.url)")
    key = cfg.api_key.get_secret_value() if cfg.api_key else ""
    if not key.strip():
        raise ConfigError(
            "no Label Studio API key: set LABEL_STUDIO_API_KEY (or label_studio.api_key); "
            "create one in Label Studio under Account & Settings > Access Token"
        )
    client = LabelStudioClient(cfg.url, key, timeout=cfg.timeout)
    client.whoami()
    return client


@dataclass
class ProjectHandle:
    record: LSProjectRecord
    ui: LabelingInterface
    remote: dict[str, Any]
    created: bool = False

    @property
    def url(self) -> str:
        return f"{self.record.server}/projects/{self.record.project_id}"

    @property
    def live_tag(self) -> str:
        """The model_version the project's label stream serves by now."""
        return str(self.remote.get("model_version") or "")

    @property
    def requeues_skipped(self) -> bool:
        """Whether the project serves skipped tasks again (Label Studio's ``skip_queue``: "Requeue for others",
        its default, or "Requeue for me"); with "Ignore skipped" a skip completes the task."""
        return self.remote.get("skip_queue") != IGNORE_SKIPPED

    @property
    def serving(self) -> bool:
        """Whether the label stream serves the ranking this database wrote last (someone may have switched the
        project's sampling or model_version since)."""
        return bool(self.record.active_tag and self.live_tag == self.record.active_tag and not self.drift)

    @property
    def drift(self) -> str | None:
        """What someone changed in the project since curate's last ranking (None: nothing)."""
        if not self.record.active_tag:
            return None
        changes = []
        if self.remote.get("sampling") != UNCERTAINTY_SAMPLING:
            changes.append(f"sampling is {self.remote.get('sampling')!r}")
        if self.live_tag != self.record.active_tag:
            changes.append(f"model_version is {self.live_tag!r}")
        return ", ".join(changes) or None


def _name(name: str | None) -> str:
    if not name:
        raise ConfigError("no Label Studio project: pass --project NAME_OR_ID (or set label_studio.project)")
    return name


def find_project(ls: LabelStudioAPI, name_or_id: str) -> dict[str, Any] | None:
    """A project by numeric id, or by exact title (the API's title search is a case-insensitive substring)."""
    if name_or_id.isdigit():
        try:
            return ls.project(int(name_or_id))
        except LabelStudioError as exc:
            if exc.status == 404:
                return None
            raise
    exact = [p for p in ls.projects_titled(name_or_id) if p.get("title") == name_or_id]
    return ls.project(int(exact[0]["id"])) if exact else None


def open_project(
    store: Store,
    ls: LabelStudioAPI,
    mv: ModelVersionRecord,
    name: str | None,
    *,
    create: bool = True,
    add_labels: bool = False,
) -> ProjectHandle:
    """Find (or create) the project ``name`` and check its labeling config against the model's classes. With
    ``add_labels`` (``train.allow_new_classes``), model classes the config lacks are added to it through the API
    when that is the only difference (a model that grew a class); labels the model does not predict still fail."""
    name = _name(name)
    remote = find_project(ls, name)
    created = False
    if remote is None:
        if not create or name.isdigit():
            raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {name!r}")
        if not 3 <= len(name) <= 50:
            raise ConfigError(f"Label Studio project titles must be 3 to 50 characters, got {name!r}")
        remote = ls.create_project(
            name, label_config(mv.task, mv.class_names), description="Queue ordered by curate (active learning)."
        )
        created = True
    parsed = remote.get("parsed_label_config") or {}
    grow = missing_labels(parsed, mv.task, mv.class_names) if add_labels else None
    if grow is not None:
        control, labels = grow
        ls.set_label_config(
            int(remote["id"]), with_labels(str(remote.get("label_config") or ""), mv.task, control, labels)
        )
        remote = ls.project(int(remote["id"]))
        parsed = remote.get("parsed_label_config") or {}
    ui = check_label_config(parsed, mv.task, mv.class_names)
    record = store.label_studio.project(ls.url, int(remote["id"]), str(remote.get("title", name)), mv.task)
    return ProjectHandle(record, ui, remote, created)


def ensure_prelabeling(ls: LabelStudioAPI, project: ProjectHandle, on: bool) -> bool:
    """Set the project's "Use predictions to prelabel tasks" to ``on``; returns whether it changed. Turning it off
    makes Label Studio clear the project's ``model_version``: the ranking this database serves is switched back
    on, so the label stream keeps serving curate's order (Uncertainty sampling does not depend on prelabeling)."""
    if bool(project.remote.get("show_collab_predictions", True)) == on:
        return False
    pid = project.record.project_id
    ls.set_prelabeling(pid, on)
    project.remote["show_collab_predictions"] = on
    if project.record.active_tag and project.remote.get("model_version") == project.record.active_tag:
        ls.set_ranking(pid, project.record.active_tag)
    return True


def known_project(store: Store, ls: LabelStudioAPI, name: str | None) -> ProjectHandle:
    """The project ``name``, which this database must have pushed to already (its task type is known)."""
    name = _name(name)
    remote = find_project(ls, name)
    if remote is None:
        raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {name!r}")
    records = [p for p in store.label_studio.projects() if p.server == ls.url and p.project_id == int(remote["id"])]
    if not records:
        raise ProjectNotFoundError(
            f"curate has not pushed to project {name!r} from {store.display_url} yet: nothing to pull"
        )
    ui = LabelingInterface(from_name="", to_name="", data_key="image")
    return ProjectHandle(records[0], ui, remote)


def ensure_storage(
    ls: LabelStudioAPI,
    project: ProjectHandle,
    cfg: LabelStudioSettings,
    pool_path: str | None,
    s3: S3Settings | None = None,
) -> str | None:
    """Connect the storage Label Studio loads the pool's images from. Local-files serving needs a local storage
    covering the pool (a subfolder of the root); an object-store pool gets an S3 import storage for its bucket
    and prefix (presigned URLs; the endpoint for S3-compatible servers). Returns the storage's path or URI, or
    None when images are served from ``url_prefix``."""
    if cfg.url_prefix or not pool_path:
        return None
    from curation.scoring.pool import LabelStudioPool, PoolSource, resolve_pool

    pool = resolve_pool(pool_path)
    if isinstance(pool, LabelStudioPool):
        return None  # the project's own tasks: it loads their images already
    if not isinstance(pool, PoolSource):
        return _ensure_s3_storage(ls, project, cfg, pool.bucket, pool.prefix, s3)
    if not cfg.document_root:
        return None
    root = pool.root
    document_root = Path(cfg.document_root).expanduser().resolve()
    if root == document_root or not root.is_relative_to(document_root):
        raise ConfigError(
            f"the pool {root} must be a subfolder of Label Studio's document root {document_root} "
            "(label_studio.document_root = the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        )
    if str(root) not in ls.local_storage_paths(project.record.project_id):
        ls.add_local_storage(project.record.project_id, str(root))
    return str(root)


def _ensure_s3_storage(
    ls: LabelStudioAPI,
    project: ProjectHandle,
    cfg: LabelStudioSettings,
    bucket: str,
    prefix: str,
    s3: S3Settings | None,
) -> str:
    from curation.labelstudio.client import S3StorageSpec
    from curation.objects.s3 import resolve_credentials

    uri = f"s3://{bucket}/{prefix}"
    pid = project.record.project_id
    # a storage of the bucket whose prefix covers the pool resolves its URIs
    if any(b == bucket and prefix.startswith(p) for b, p in ls.s3_storage_buckets(pid)):
        return uri
    creds = resolve_credentials(s3 or S3Settings())
    spec = S3StorageSpec(
        bucket,
        prefix,
        cfg.s3_endpoint_url or creds.endpoint_url,
        creds.region,
        creds.access_key_id,
        creds.secret_access_key,
        creds.session_token,
    )
    ls.add_s3_storage(pid, spec)
    return uri
