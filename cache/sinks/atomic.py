"""Files that appear complete or not at all: written under a temporary name, fsynced, renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cache.fsutil import fsync_dir


@contextlib.contextmanager
def replacing(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``target`` when the block ends normally; an error leaves no trace."""
    folder = target.parent
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(folder)
