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
