"""Pools: find image files (directory walk or manifest), give each a content id, register them in the store.

The content id is the SHA-256 of the file bytes (first 32 hex digits): a moved or renamed file keeps its id and
is not scored again, and exact duplicates collapse into one item. Files whose size and mtime are unchanged since
the last scan are not re-hashed, so a rescan of an unchanged pool costs one ``stat`` per file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from curation.errors import PoolError
from curation.objects.uris import SUPPORTED_SCHEMES, uri_scheme
from curation.scoring.images import DEFAULT_MAX_PIXELS, original_size
from store import Store
from store.records import KnownPath, ScannedFile

if TYPE_CHECKING:
    from curation.objects.uris import UriReader
    from curation.scoring.object_pool import ObjectPool

MANIFEST_SUFFIXES = (".txt", ".csv", ".jsonl")
REMOTE_PAGE = 256  # a manifest's URI lines read per round (bytes in memory: at most this many images)
HASH_CHUNK = 1 << 20
STAT_CHUNK = 2048  # files stat-ed and compared at once: a huge folder's stat results are never all held in memory


@dataclass(frozen=True)
class PoolSource:
    """Where images come from. Paths are stored relative to ``root`` when they lie under it."""

    location: Path  # the directory or the manifest file, absolute
    kind: str  # "directory" | "manifest"
    root: Path  # directory relative paths are resolved against


@dataclass
class ScanReport:
    files: int = 0
    hashed: int = 0
    new_items: int = 0
    duplicate_paths: int = 0
    removed: int = 0
    pending: int = 0  # object-store pools: objects listed but not read yet (read, hashed and resolved when scored)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not an item at all


LS_SCHEME = "ls://"


@dataclass(frozen=True)
class LabelStudioPool:
    """An existing Label Studio project's tasks (``ls://<title or id>``; scanned by ``curation.labelstudio.pool``).
    Items' paths are the tasks' image references, stored as they are."""

    location: str  # ls://<title or id>, as given (stripped)
    kind: str  # "label_studio"
    root: str  # the location: item_location() returns the stored reference for ls:// roots
    project: str  # the title or id

    def key(self, stored: str) -> str:
        return stored


def resolve_ls_pool(text: str) -> LabelStudioPool:
    name = text.strip()[len(LS_SCHEME) :].strip().rstrip("/")
    if not name:
        raise PoolError("ls:// needs a Label Studio project title or id: --pool ls://<project>")
    location = f"{LS_SCHEME}{name}"
    return LabelStudioPool(location, "label_studio", location, name)


def resolve_pool(path: str | Path | None) -> PoolSource | ObjectPool | LabelStudioPool:
    """Validate the ``--pool`` argument once, at the boundary (``s3://bucket/prefix``: an object-store pool;
    ``ls://<project>``: an existing Label Studio project's tasks)."""
    if path is None or str(path).strip() == "":
        raise PoolError("no pool given: pass --pool DIR (or a manifest file) or set pool.path in the config")
    if isinstance(path, str) and path.strip()[:5].lower() == "s3://":
        from curation.scoring.object_pool import resolve_object_pool

        return resolve_object_pool(path)
    if isinstance(path, str) and path.strip()[:5].lower() == LS_SCHEME:
        return resolve_ls_pool(path)
    return resolve_local_pool(path)


def resolve_local_pool(path: str | Path) -> PoolSource:
    """A directory or a manifest file."""
    location = Path(path).expanduser()
    try:
        location = location.resolve(strict=True)
    except FileNotFoundError:
        raise PoolError(f"pool not found: {path}") from None
    except (OSError, RuntimeError) as exc:
        raise PoolError(f"cannot access pool {path}: {exc}") from None
    if not _is_utf8(str(location)):
        raise PoolError(f"pool path {shown_path(location)} is not valid UTF-8: rename it (paths are stored as text)")
    if location.is_dir():
        if not os.access(location, os.R_OK | os.X_OK):
            raise PoolError(f"pool directory is not readable: {location}")
        return PoolSource(location, "directory", location)
    if location.is_file():
        if location.suffix.lower() not in MANIFEST_SUFFIXES:
            raise PoolError(
                f"pool {location} is a file but not a manifest: expected a directory or a "
                f"{', '.join(MANIFEST_SUFFIXES)} file"
            )
        if not os.access(location, os.R_OK):
            raise PoolError(f"pool manifest is not readable: {location}")
        return PoolSource(location, "manifest", location.parent)
    raise PoolError(f"pool is neither a directory nor a file: {location}")


def walk_directory(root: Path, extensions: tuple[str, ...], skipped: list[tuple[str, str]]) -> Iterator[Path]:
    """Recursive walk. Symlinks are followed only while they stay inside ``root``; loops are visited once."""
    return (Path(folder, name) for folder, names in _walk_folders(root, extensions, skipped) for name in names)


def _walk_folders(
    root: Path, extensions: tuple[str, ...], skipped: list[tuple[str, str]]
) -> Iterator[tuple[str, list[str]]]:
    """``walk_directory`` one folder at a time: (the folder's path as text, the names of its image files). An idle
    scan of a large pool spends its time here and in the ``stat`` that follows, so a folder's files are handed over
    as one list of plain names (stat-ed and compared in bulk) rather than one ``Path`` or string per file."""
    real_root = root.resolve()
    visited: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError as exc:
            skipped.append((shown_path(directory), f"cannot read directory: {exc.strerror or exc}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited:
            continue
        visited.add(key)
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as exc:
            skipped.append((shown_path(directory), f"cannot read directory: {exc.strerror or exc}"))
            continue
        subdirs = []
        names = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not target.is_relative_to(real_root):
                        skipped.append((shown_path(entry.path), "symlink leaves the pool root"))
                        continue
                    if not target.exists():
                        skipped.append((shown_path(entry.path), "broken symlink"))
                        continue
                is_dir = entry.is_dir()
            except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on resolve()
                skipped.append((shown_path(entry.path), f"cannot follow: {shown_path(str(exc))}"))
                continue
            if is_dir:
                subdirs.append(entry.path)
            else:
                name = entry.name
                dot = name.rfind(".")  # Path.suffix without building a Path: a leading dot is no suffix
                if dot > 0 and name[dot:].lower() in extensions:
                    names.append(name)
        if names:
            yield directory, names
        stack.extend(sorted(subdirs, reverse=True))  # walked in name order: symlinked aliases resolve the same way


def read_manifest(manifest: Path) -> Iterator[Path | str]:
    """Paths listed in a .txt (one per line, # comments), .csv (a ``path`` column, else the first) or .jsonl file
    (objects with ``path``, or bare strings). Relative paths are relative to the manifest's directory; an entry
    written as a URI (``s3://``, ``https://``, any ``scheme://``) is yielded as that text."""
    base = manifest.parent
    suffix = manifest.suffix.lower()
    try:
        with manifest.open(encoding="utf-8", newline="") as fh:
            if suffix == ".txt":
                raw: Iterator[str] = (line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#"))
            elif suffix == ".csv":
                raw = _csv_paths(fh, manifest)
            else:
                raw = _jsonl_paths(fh, manifest)
            for entry in raw:
                if uri_scheme(entry) is not None:
                    yield entry
                    continue
                p = Path(entry).expanduser()
                yield p if p.is_absolute() else base / p
    except UnicodeDecodeError as exc:
        raise PoolError(f"manifest {manifest} is not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise PoolError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None


def _csv_paths(fh: IO[str], manifest: Path) -> Iterator[str]:
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        return
    lowered = [h.strip().lower() for h in header]
    column = lowered.index("path") if "path" in lowered else 0
    if "path" not in lowered and header and header[0].strip():
        yield header[0].strip()  # no header row: the first line is data
    for row in reader:
        if len(row) > column and row[column].strip():
            yield row[column].strip()


def _jsonl_paths(fh: IO[str], manifest: Path) -> Iterator[str]:
    for number, raw in enumerate(fh, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PoolError(f"manifest {manifest} line {number}: invalid JSON ({exc.msg})") from None
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict) and isinstance(value.get("path"), str):
            yield value["path"]
        else:
            raise PoolError(f'manifest {manifest} line {number}: expected a string or an object with "path"')


def shown_path(path: Path | str) -> str:
    """``path`` as printable, storable text: bytes that are not UTF-8 (kept by Python as surrogates) become
    ``\\xNN`` escapes, so a message or a JSON report about such a file can always be written."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UTF8 = "file name is not valid UTF-8: rename it (paths are stored as text and become Label Studio URLs)"


def content_id(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()[:32]


def stored_path(source: PoolSource, path: Path) -> str:
    """Paths are stored relative to the pool root when under it (portable databases), else absolute."""
    absolute = path if path.is_absolute() else (Path.cwd() / path)
    absolute = Path(os.path.normpath(absolute))
    try:
        return absolute.relative_to(source.root).as_posix()
    except ValueError:
        return str(absolute)


def absolute_path(root: str | Path, stored: str) -> Path:
    p = Path(stored)
    return p if p.is_absolute() else Path(root) / p


def is_remote(stored: str) -> bool:
    """Whether a stored path is a URI (a manifest's ``s3://``/``https://`` line), not a file path."""
    return uri_scheme(stored) is not None


def item_location(root: str | Path, stored: str) -> str:
    """Where an item is, as text: ``s3://bucket/key`` for object-store pools and a manifest's URI lines, the
    task's image reference for ``ls://`` pools, else the absolute file path."""
    if str(root).startswith("s3://"):
        return f"{root}{stored}"
    if str(root).startswith("ls://") or is_remote(stored):
        return stored
    return str(absolute_path(root, stored))


def manifest_entry_problem(
    path: Path, source: PoolSource, extensions: tuple[str, ...], allow_outside_root: bool
) -> str | None:
    """Why a manifest entry is refused before it is even opened, or None.

    A manifest may be written by someone else (or a careless script): an entry must name an image file
    (``pool.extensions``) and, unless ``pool.allow_outside_root``, lie in the manifest's directory tree once
    symlinks are followed, so that a manifest cannot make curate read, hash and store ``/etc/passwd``.
    """
    if path.suffix.lower() not in extensions:
        return f"not an image file name (pool.extensions: {', '.join(extensions)})"
    if not allow_outside_root:
        try:
            inside = path.resolve().is_relative_to(source.root.resolve())
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            inside = False
        if not inside:
            return "outside the manifest's directory (set pool.allow_outside_root: true to allow it)"
    return None


def _stat_chunk(
    base: str, rel: str, names: list[str], folder_fd: int | None = None
) -> tuple[list[str], set[tuple[str, int, int]]] | None:
    """The stored keys of ``names`` (files of the folder ``base``, whose key prefix is ``rel``) and their
    ``(key, size, mtime_ns)``; None if any of them cannot be stat-ed or is not a regular file (the caller then goes
    file by file, to report which and why). ``folder_fd``: the folder opened, so that each ``stat`` resolves one
    name instead of the whole path again (a quarter of an idle scan's ``stat`` time on a deep root)."""
    st = os.stat
    try:
        if folder_fd is None:
            stats = [st(base + name) for name in names]
        else:
            stats = [st(name, dir_fd=folder_fd) for name in names]
    except OSError:
        return None
    is_reg = stat.S_ISREG
    if not all(is_reg(s.st_mode) for s in stats):
        return None
    keys = [rel + name for name in names] if rel else names
    return keys, {(k, s.st_size, s.st_mtime_ns) for k, s in zip(keys, stats, strict=True)}


def _open_folder(path: str) -> int | None:
    """A descriptor of the folder for ``stat(name, dir_fd=...)``, or None where that is not supported or the
    folder cannot be opened (the full paths are used then)."""
    if os.stat not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def scan_pool(
    store: Store,
    source: PoolSource,
    extensions: tuple[str, ...],
    hash_workers: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    allow_outside_root: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    remote: UriReader | None = None,
) -> tuple[int, ScanReport]:
    """Find the pool's files and register them. Returns the pool id and what changed. Manifest entries that
    ``manifest_entry_problem`` refuses are reported in ``ScanReport.skipped`` and never read. A manifest's
    ``s3://`` and ``http(s)://`` lines are read through ``remote`` (``scan_remote_entries``)."""
    report = ScanReport()
    pool_id = store.pools.get_or_create(str(source.location), source.kind, str(source.root))
    known_rows = store.pools.known_stats(pool_id)
    unchanged = set(known_rows)  # (path, size, mtime_ns) as the last scan saw them
    directory = source.kind == "directory"
    prefix = os.path.join(str(source.root), "")
    seen: set[str] = set()
    to_hash: list[tuple[str, Path, int, int]] = []
    uris: dict[str, None] = {}  # a manifest's URI lines, in order, once each

    def consider(path: str | Path) -> None:
        """One file, with every check and a reason for each refusal (manifest entries; a folder whose bulk pass
        met anything unusual)."""
        # a walked path is the root joined with plain names: its stored key is the rest of the string
        key = (
            path[len(prefix) :]
            if isinstance(path, str) and path.startswith(prefix)
            else stored_path(source, Path(path))
        )
        if key in seen:
            return
        if not key.isascii() and not _is_utf8(key):  # one such name must not stop the pool from being registered
            report.skipped.append((shown_path(path), NOT_UTF8))
            return
        if not directory:
            problem = manifest_entry_problem(Path(path), source, extensions, allow_outside_root)
            if problem is not None:
                report.skipped.append((shown_path(path), problem))
                return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            report.skipped.append((shown_path(path), "file not found"))
            return
        except OSError as exc:
            report.skipped.append((shown_path(path), f"cannot stat: {exc.strerror or exc}"))
            return
        if not stat.S_ISREG(st.st_mode):
            report.skipped.append((shown_path(path), "not a regular file"))
            return
        seen.add(key)
        if (key, st.st_size, st.st_mtime_ns) not in unchanged:
            to_hash.append((key, Path(path), st.st_size, st.st_mtime_ns))

    if directory:
        for folder, names in _walk_folders(source.location, extensions, report.skipped):
            base = os.path.join(folder, "")
            rel = base[len(prefix) :]
            if not base.startswith(prefix) or not (rel + "".join(names)).isascii():
                for name in names:  # file by file: keys checked for UTF-8 one by one
                    consider(base + name)
                continue
            chunks = [names[i : i + STAT_CHUNK] for i in range(0, len(names), STAT_CHUNK)]
            folder_fd = _open_folder(folder)
            try:
                for part in chunks:
                    stated = _stat_chunk(base, rel, part, folder_fd)
                    if stated is None:  # something unusual in this chunk: file by file, with the reasons
                        for name in part:
                            consider(base + name)
                        continue
                    keys, current = stated
                    seen.update(keys)
                    to_hash.extend((k, Path(prefix + k), size, mtime) for k, size, mtime in current - unchanged)
            finally:
                if folder_fd is not None:
                    os.close(folder_fd)
    else:
        for entry in read_manifest(source.location):
            if isinstance(entry, str) and (scheme := uri_scheme(entry)) is not None:
                problem = remote_entry_problem(entry, scheme, extensions, remote)
                if problem is not None:
                    report.skipped.append((shown_path(entry), problem))
                else:
                    uris[entry] = None
                continue
            consider(entry)
    report.files = len(seen)
    to_hash.sort()  # new files get item ids in path order, whatever order the directory listed them in

    changed: list[ScannedFile] = []

    def _hash(job: tuple[str, Path, int, int]) -> ScannedFile | tuple[str, str, str]:
        key, path, size, mtime_ns = job
        try:
            digest = content_id(path)
        except OSError as exc:
            return (key, shown_path(path), f"cannot read: {exc.strerror or exc}")
        try:
            width, height = original_size(path, max_pixels)
        except Exception:  # not an image: decoding will fail later and record the reason once
            return ScannedFile(key, size, mtime_ns, digest)
        return ScannedFile(key, size, mtime_ns, digest, width, height)

    with ThreadPoolExecutor(max_workers=hash_workers) as pool:  # hashlib releases the GIL on large buffers
        for done, result in enumerate(pool.map(_hash, to_hash), start=1):
            if isinstance(result, ScannedFile):
                changed.append(result)
            else:
                key, shown, reason = result
                report.skipped.append((shown, reason))
                seen.discard(key)
            if on_progress is not None:
                on_progress(done, len(to_hash))
    if uris and remote is not None:
        known = store.pools.known_among(pool_id, list(uris))
        remote_changed, remote_seen = scan_remote_entries(list(uris), known, remote, report, max_pixels)
        changed.extend(remote_changed)
        seen.update(remote_seen)
    report.hashed = len(changed)
    # every file seen is a known path, unchanged, and as many as the store knows: nothing can be gone (an idle
    # rescan of a large pool skips building the set of known paths)
    nothing_gone = not to_hash and not uris and len(seen) == len(known_rows)
    gone = [] if nothing_gone else sorted({row[0] for row in known_rows} - seen)
    report.removed = len(gone)
    report.files = len(seen)
    report.new_items, report.duplicate_paths = store.pools.apply_scan(pool_id, changed, gone)
    return pool_id, report


def remote_entry_problem(uri: str, scheme: str, extensions: tuple[str, ...], remote: UriReader | None) -> str | None:
    """Why a manifest's URI line is refused before any request, or None."""
    if scheme not in SUPPORTED_SCHEMES:
        return f"unsupported URI scheme {scheme}:// (manifests take local paths, s3:// and http(s):// URIs)"
    if not _is_utf8(uri):
        return NOT_UTF8
    name = uri.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot <= 0 or name[dot:].lower() not in extensions:
        return f"not an image file name (pool.extensions: {', '.join(extensions)})"
    if remote is None:
        return "no reader for remote URIs was configured"
    if scheme == "s3":
        try:
            from curation.objects.source import parse_s3_uri

            location = parse_s3_uri(uri)
        except PoolError as exc:
            return str(exc)
        if not location.prefix or location.prefix.endswith("/"):
            return "an s3:// line must name an object (bucket/key), not a prefix"
        return None
    return remote.http.refusal(uri)


def scanned_bytes(path: str, size: int, mtime_ns: int, etag: str | None, data: bytes, max_pixels: int) -> ScannedFile:
    """An item read whole at scan time (a manifest's URI line, an ``ls://`` task's image): its content id and,
    if its header says, its size."""
    from curation.scoring.object_pool import content_id_of

    digest = content_id_of(data)
    try:
        width, height = original_size(io.BytesIO(data), max_pixels)
    except Exception:  # not an image: decoding records the reason once, as for local files
        return ScannedFile(path, size, mtime_ns, digest, etag=etag)
    return ScannedFile(path, size, mtime_ns, digest, width, height, etag=etag)


def scan_remote_entries(
    uris: list[str],
    known: dict[str, KnownPath],
    remote: UriReader,
    report: ScanReport,
    max_pixels: int,
) -> tuple[list[ScannedFile], set[str]]:
    """Read a manifest's ``s3://`` and ``http(s)://`` lines: s3 objects are HEAD-ed and read only when new or
    changed (another size or ETag), as in ``s3://`` pools; http(s) URLs are fetched with ``If-None-Match`` of the
    stored ETag (304: unchanged, nothing downloaded). Returns (new or changed files, every path still present).
    A failure skips that line with the reason; a transient one keeps what the last scan read."""
    from curation.objects.source import ObjectReadError

    seen: set[str] = set()
    changed: list[ScannedFile] = []

    def scanned(uri: str, size: int, etag: str | None, data: bytes) -> ScannedFile:
        return scanned_bytes(uri, size, 0, etag, data, max_pixels)

    def failed(uri: str, error: ObjectReadError) -> None:
        note = " (tried again next run)" if error.transient else ""
        report.skipped.append((uri, f"{error}{note}"))
        if error.transient and uri in known:
            seen.add(uri)  # keep what the last scan read until it can be read again

    s3 = [u for u in uris if u[:5].lower() == "s3://"]
    http = [u for u in uris if u[:5].lower() != "s3://"]
    for start in range(0, len(s3), REMOTE_PAGE):
        part = s3[start : start + REMOTE_PAGE]
        to_read: list[tuple[str, int, str | None]] = []
        for uri, info in zip(part, remote.stat_s3(part), strict=True):
            if isinstance(info, ObjectReadError):
                failed(uri, info)
                continue
            old = known.get(uri)
            if old is not None and old.size == info.size and old.etag is not None and old.etag == info.etag:
                seen.add(uri)
            else:
                to_read.append((uri, info.size, info.etag))
        for (uri, size, etag), data in zip(to_read, remote.read_many([u for u, _, _ in to_read]), strict=True):
            if isinstance(data, ObjectReadError):
                failed(uri, data)
            else:
                changed.append(scanned(uri, size, etag, data))
                seen.add(uri)
    for start in range(0, len(http), REMOTE_PAGE):
        part = http[start : start + REMOTE_PAGE]
        etags = [known[u].etag if u in known else None for u in part]
        for uri, result in zip(part, remote.http.fetch_many(part, etags), strict=True):
            if isinstance(result, ObjectReadError):
                failed(uri, result)
            elif result.data is None:  # 304: unchanged since the stored ETag
                seen.add(uri)
            else:
                changed.append(scanned(uri, len(result.data), result.etag, result.data))
                seen.add(uri)
    return changed, seen
