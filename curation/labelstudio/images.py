"""Where the image of a task Label Studio sends (``/predict``) may be read from — a pure decision, no I/O.

Only three kinds of reference are followed, so that a task cannot make curate fetch an arbitrary URL (SSRF):

- Label Studio's local-files URL (``/data/local-files/?d=REL``, relative or on the configured server): the file
  ``document_root/REL``, which must stay inside the document root once resolved;
- ``label_studio.url_prefix`` + path: the file under the pool root, which must stay inside it;
- any other path on the configured Label Studio server (uploads, ``/tasks/<id>/resolve/…`` for cloud storage):
  fetched from that server with the API key.

Everything else — another host, ``s3://`` or ``file://`` URIs, ``data:`` URLs, scheme-relative ``//host`` — is
refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LOCAL_FILES = "/data/local-files/"


@dataclass(frozen=True)
class TaskImage:
    """``kind`` is ``local`` (``path`` set), ``label_studio`` (``url``: a path on the server) or ``refused``."""

    kind: str
    path: Path | None = None
    url: str | None = None
    reason: str | None = None


def _refused(reason: str) -> TaskImage:
    return TaskImage("refused", reason=reason)


def _inside(root: Path, relative: str, what: str) -> TaskImage:
    if not relative or "\x00" in relative:
        return _refused(f"empty or invalid path in the {what} reference")
    base = root.expanduser().resolve()
    try:
        target = (base / relative.lstrip("/")).resolve()
    except (OSError, RuntimeError):
        return _refused(f"cannot resolve {relative!r} under {what}")
    if not target.is_relative_to(base) or target == base:
        return _refused(f"{relative!r} leaves {what} {base}")
    return TaskImage("local", path=target)


def resolve_task_image(
    value: object,
    *,
    ls_url: str | None,
    document_root: str | None,
    url_prefix: str | None,
    pool_root: Path | None,
) -> TaskImage:
    if not isinstance(value, str) or not value.strip():
        return _refused("the task has no image reference")
    value = value.strip()
    if url_prefix and pool_root is not None and value.startswith(url_prefix.rstrip("/") + "/"):
        return _inside(pool_root, unquote(value[len(url_prefix.rstrip("/")) + 1 :]), "the pool root")
    parts = urlsplit(value)
    ls = urlsplit(ls_url or "")
    if parts.scheme or parts.netloc:
        same_server = bool(ls.netloc) and (parts.scheme, parts.netloc.lower()) == (ls.scheme, ls.netloc.lower())
        if not same_server:
            where = parts.netloc or parts.scheme
            return _refused(f"the image is not on the configured Label Studio or under a pool root ({where})")
        path_and_query = value[len(f"{parts.scheme}://{parts.netloc}") :]
    elif value.startswith("/") and not value.startswith("//"):
        path_and_query = value
    else:
        return _refused("the image reference is neither a Label Studio path nor a URL on the configured server")
    path = urlsplit(path_and_query).path
    if path.startswith(LOCAL_FILES):
        if not document_root:
            return _refused("a local-files image, but label_studio.document_root is not set")
        relative = parse_qs(urlsplit(path_and_query).query).get("d", [""])[0]
        return _inside(Path(document_root), relative, "Label Studio's document root")
    if ".." in path.split("/"):
        return _refused("the image path contains '..'")
    if not ls.netloc:
        return _refused("the image is served by Label Studio, but no Label Studio URL is configured")
    return TaskImage("label_studio", url=path_and_query)


def pool_task_image(value: object, *, ls_url: str, allowed_hosts: tuple[str, ...] | list[str]) -> TaskImage:
    """Where an ``ls://`` pool reads a task's image from — a pure decision, no I/O. Kinds: ``label_studio``
    (``url``: a path on the configured server, read with the API key: local files, uploads), ``s3`` (``url``: the
    ``s3://`` URI, read through the project's storage or curate's own credentials), ``http`` (``url``: a URL on
    a host of ``pool.http.allowed_hosts``), or ``refused`` with the reason: any other host is never fetched."""
    from curation.objects.http import refusal

    if not isinstance(value, str) or not value.strip():
        return _refused("the task has no image reference")
    value = value.strip()
    lowered = value.lower()
    if lowered.startswith("s3://"):
        return TaskImage("s3", url=value)
    parts = urlsplit(value)
    ls = urlsplit(ls_url)
    if parts.scheme or parts.netloc:
        if (parts.scheme.lower(), parts.netloc.lower()) == (ls.scheme.lower(), ls.netloc.lower()):
            value = value[len(f"{parts.scheme}://{parts.netloc}") :] or "/"
        elif parts.scheme.lower() in ("http", "https"):
            reason = refusal(value, allowed_hosts)
            return TaskImage("http", url=value) if reason is None else _refused(reason)
        else:
            return _refused(f"unsupported image reference scheme {parts.scheme or 'none'}://")
    elif not value.startswith("/") or value.startswith("//"):
        return _refused("the image reference is neither a Label Studio path nor a URL")
    if ".." in urlsplit(value).path.split("/") or "\\" in value:
        return _refused("the image path contains '..'")
    return TaskImage("label_studio", url=value)
