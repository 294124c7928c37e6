"""``curate ls connect``: make Label Studio use ``curate serve`` — the project's ML backend and its webhook."""

from __future__ import annotations

from typing import Any

from curation.config import Settings
from curation.errors import ConfigError, ProjectNotFoundError
from curation.labelstudio.backend import connect_backend, disconnect_backend
from curation.labelstudio.project import connect, find_project


def ls_connect(settings: Settings, *, url: str | None, remove: bool = False) -> dict[str, Any]:
    """Register (or with ``remove``, unregister) the server at ``url`` (default ``serve.public_url``)."""
    url = (url or settings.serve.public_url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"invalid curate serve URL {url!r}: pass --url http(s)://host:port (the address Label Studio reaches "
            "curate serve at) or set serve.public_url"
        )
    name = settings.label_studio.project
    if not name:
        raise ConfigError("no Label Studio project: pass --project NAME_OR_ID (or set label_studio.project)")
    ls = connect(settings.label_studio)
    remote = find_project(ls, name)
    if remote is None:
        raise ProjectNotFoundError(f"Label Studio at {ls.url} has no project {name!r}")
    project_id = int(remote["id"])
    base = {"server": ls.url, "project": remote.get("title", name), "project_id": project_id, "url": url}
    if remove:
        return {**base, "removed": True, **disconnect_backend(ls, project_id, url)}
    cfg = settings.serve
    basic = (cfg.username, cfg.password.get_secret_value()) if cfg.username and cfg.password else None
    secret = cfg.webhook_secret.get_secret_value() if cfg.webhook_secret else None
    return {**base, "removed": False, **connect_backend(ls, project_id, url, basic_auth=basic, secret=secret)}
