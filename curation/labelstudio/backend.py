"""``curate ls connect``: register curate serve in a project as its ML backend (``/api/ml``) and its webhook
(``/api/webhooks``), idempotently; ``disconnect`` removes both.

Label Studio creates a webhook ``<backend>/webhook`` for every action when a backend is added; curate then
narrows it to the annotation actions and adds the shared-secret header, so there is exactly one such webhook.
"""

from __future__ import annotations

from typing import Any

from curation.labelstudio.client import LabelStudioAPI

SECRET_HEADER = "X-Curate-Secret"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
BACKEND_TITLE = "curate"


def _same(a: object, b: str) -> bool:
    return isinstance(a, str) and a.rstrip("/") == b.rstrip("/")


def connect_backend(
    ls: LabelStudioAPI,
    project_id: int,
    url: str,
    *,
    basic_auth: tuple[str, str] | None,
    secret: str | None,
) -> dict[str, Any]:
    url = url.rstrip("/")
    backends = [b for b in ls.ml_backends(project_id) if _same(b.get("url"), url)]
    backend_created = not backends
    backend = ls.add_ml_backend(project_id, url, BACKEND_TITLE, basic_auth) if backend_created else backends[0]
    hook_url = f"{url}/webhook"
    headers = {SECRET_HEADER: secret} if secret else {}
    hooks = sorted((w for w in ls.webhooks(project_id) if _same(w.get("url"), hook_url)), key=lambda w: int(w["id"]))
    for extra in hooks[1:]:
        ls.delete_webhook(int(extra["id"]))
    webhook_created = webhook_updated = False
    if not hooks:
        hook = ls.add_webhook(project_id, hook_url, headers, WEBHOOK_ACTIONS)
        webhook_created = True
    else:
        hook = hooks[0]
        wanted = (headers, sorted(WEBHOOK_ACTIONS), False)
        found = (hook.get("headers") or {}, sorted(hook.get("actions") or []), bool(hook.get("send_for_all_actions")))
        if found != wanted or not hook.get("is_active", True):
            ls.update_webhook(int(hook["id"]), hook_url, headers, WEBHOOK_ACTIONS)
            webhook_updated = True
    return {
        "backend_id": int(backend.get("id") or 0),
        "backend_created": backend_created,
        "webhook_id": int(hook.get("id") or 0),
        "webhook_created": webhook_created,
        "webhook_updated": webhook_updated,
        "webhook_actions": list(WEBHOOK_ACTIONS),
        "webhook_secret": bool(secret),
        "basic_auth": basic_auth is not None,
    }


def disconnect_backend(ls: LabelStudioAPI, project_id: int, url: str) -> dict[str, Any]:
    url = url.rstrip("/")
    backends = [int(b["id"]) for b in ls.ml_backends(project_id) if _same(b.get("url"), url)]
    for backend_id in backends:
        ls.delete_ml_backend(backend_id)
    hooks = [int(w["id"]) for w in ls.webhooks(project_id) if _same(w.get("url"), f"{url}/webhook")]
    for hook_id in hooks:
        ls.delete_webhook(hook_id)
    return {"backends_removed": len(backends), "webhooks_removed": len(hooks)}
