"""Small file-system helpers: durable writes, directory fsync, cross-process locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` survive a power loss (containerd#12301)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``target`` when the block ends normally; readers see the old or
    the new file, never a mix, and an error leaves no trace."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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
    fsync_dir(target.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with replacing(path, mode) as out:
        out.write(data)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing).

    Yields True when the lock is held. With ``blocking=False`` it yields False instead of waiting.
    gc may unlink an idle lock file; after locking we check that the path still names our inode and
    start over if not, so two holders can never exist.
    """
    while True:
        # Read-only: flock needs no write access, so another user's lock file in a shared cache works.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o664)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN) and not blocking:
                    yield False
                    return
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # the file was removed while we waited: lock the new one
            yield True
            return
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class InUse:
    """A temporary file in ingest/ that this process is writing, made (when missing) and marked in
    use at once: a shared ``flock`` on the file itself, which gc's :func:`remove_unless_in_use`
    cannot take over it. :meth:`close` (or the end of a ``with`` block) removes the file once it is
    published or dropped. The kernel drops the mark if the process dies, so what a killed writer
    left becomes removable by itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Drop the mark and leave the file (as a writer that died would)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Remove the file (a published blob lives on under its own name), then drop the mark."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.release()

    def __enter__(self) -> InUse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_unless_in_use(path: Path | str) -> bool:
    """Unlink a temporary file unless a writer marked it :class:`InUse`. True when removed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)
