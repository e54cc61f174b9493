"""Files written whole or not at all: a temporary file next to the target, fsynced, then renamed over it.

A reader (or a restart) never sees half a file, and a write that fails leaves the previous file intact and no
temporary file behind. The engine's exports and the artifact stores (local directory, S3 download cache) all write
through `atomic_write`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """Make the renames in `directory` durable; best effort (not every platform or file system syncs directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)`, which creates the file at `tmp` next to `final`, fsync it, then rename it over `final`.

    The temporary name is hidden and unique and keeps `final`'s suffix (Keras picks a format by it):
    ``.{stem}.{random}.tmp{suffix}``. If `write`, the fsync or the rename raises, the temporary file is removed and
    the exception propagates; `final` is untouched. `final`'s directory is created if needed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # `write` creates the file itself, so it gets the usual permissions (umask), as any file the process writes.
    tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex}.tmp{final.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
