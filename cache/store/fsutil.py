"""Small file-system helpers: durable writes, directory fsync, cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cache.store.folder import Folder, UnsafeFile

TEMP_SUFFIX = ".tmp"


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
    the new file, never a mix, and an error leaves no trace.

    The temporary file, ``.<name>.<random>.tmp`` beside the target, is locked while it is written. A
    process killed meanwhile leaves it behind (an export of gigabytes, say): the next replacing of
    the same target removes every such leftover whose lock nobody holds.
    """
    prefix = f".{target.name}."
    _remove_leftovers(target.parent, prefix)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=TEMP_SUFFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours while it is written: a concurrent run leaves it alone
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)  # through the descriptor: never chmod a name
            os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(target.parent)


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove the temporary files of earlier, killed :func:`replacing` runs of one target."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith(prefix) and name.endswith(TEMP_SUFFIX)]
    except OSError:
        return
    if not names:
        return
    parent = Folder.at(folder, make=False)
    try:
        for name in names:
            with contextlib.suppress(OSError):
                remove_unless_locked(parent, name)
    finally:
        parent.close()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with replacing(path, mode) as out:
        out.write(data)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (see :meth:`Folder.lock`); for locks
    outside a store's own folders. Yields True when held, False with ``blocking=False`` when busy."""
    folder = Folder.at(path.parent, make=False)
    try:
        with folder.lock(path.name, blocking=blocking) as held:
            yield held
    finally:
        folder.close()


class InUse:
    """A temporary file in ingest/ that this process is writing, opened or made (when missing, with
    ``O_EXCL``; a link is never followed) and marked in use at once: a shared ``flock`` on the file itself, which gc's
    :func:`remove_unless_in_use` cannot take over it. Write through :meth:`writable` (a descriptor of
    this very file, whatever its name points at later). :meth:`close` (or the end of a ``with``
    block) removes the file once it is published or dropped. The kernel drops the mark if the
    process dies, so what a killed writer left becomes removable by itself."""

    def __init__(self, folder: Folder, name: str) -> None:
        self.folder, self.name = folder, name
        self.path = folder.path / name  # for messages
        self._fd: int | None = _open_or_make(folder, name)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is no longer in use")
        return self._fd

    def writable(self) -> int:
        """A new descriptor of the file, for writing (close it yourself)."""
        return os.dup(self.fd)

    def release(self) -> None:
        """Drop the mark and leave the file (as a writer that died would)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Remove the file (a published blob lives on under its own name), then drop the mark."""
        if self._fd is not None:
            self.folder.remove_if_same(self.name, self._fd)
        self.release()

    def __enter__(self) -> InUse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_or_make(folder: Folder, name: str) -> int:
    """A read-write descriptor of the plain file ``name`` (with no second name elsewhere), made
    when missing; a link, FIFO or hard link in its place is removed and a new file made."""
    try:
        fd = folder.open(name, os.O_RDWR)
    except FileNotFoundError:
        return folder.create(name)
    except UnsafeFile:
        folder.remove(name)
        return folder.create(name)
    if os.fstat(fd).st_nlink == 1:
        return fd
    os.close(fd)
    folder.remove(name)
    return folder.create(name)


def remove_unless_in_use(folder: Folder, name: str) -> bool:
    """Remove a temporary file unless a writer marked it :class:`InUse`. True when removed. A link,
    FIFO or device in its place is never ours and is removed unopened (so it cannot hang us)."""
    return remove_unless_locked(folder, name)


def remove_unless_locked(folder: Folder, name: str) -> bool:
    """Remove ``name`` unless some process holds an ``flock`` on it (shared or exclusive)."""
    try:
        fd = folder.open(name)
    except FileNotFoundError:
        return False
    except UnsafeFile:
        return folder.remove(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        folder.remove_if_same(name, fd)
        return True
    finally:
        os.close(fd)
