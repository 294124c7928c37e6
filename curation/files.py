"""Writing files so that a crash never leaves half of one: write a hidden sibling, then rename it into place.

``os.replace`` is atomic on POSIX within one file system, so readers see the old file or the new one, never a
truncated one; a killed writer leaves at most a ``.<name>.<random>.tmp`` sibling, which the next writer ignores.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, on error it is removed.

    Whatever the block creates at the yielded path (a file, a symlink) is what ``target`` becomes.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        raise


def atomic_write_text(target: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return target


def atomic_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` atomically (the copy appears complete or not at all)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def check_output_path(path: Path, option: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    Why: a command that selects (and so uses up) items, or computes for minutes, must not learn only at the end
    that its file cannot be written. Checks the extension, that the path is not a folder, and that the nearest
    existing folder above it (writers create missing parents) is a writable folder.
    """
    from curation.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        names = " or ".join(s for s in suffixes if s != ".json") or "/".join(suffixes)
        raise ConfigError(f"{option} {path}: use a {names} file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path}: file is not writable")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: folder {parent} is not writable")
    return path


def check_output_folder(path: Path, option: str) -> Path:
    """Create the folder ``path`` (and its parents) to write files into, or refuse it, before any work is done."""
    from curation.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: folder is not writable")
    return path
