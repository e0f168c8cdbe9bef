"""Folder: one folder of the cache, opened once, with every file in it reached through that handle.

A shared cache (docs/shared-cache.md) is group-writable, so any member can put a symbolic link, a
FIFO or a hard link where layerhoard expects one of its own files, and can even swap a whole
folder (``ingest/``) for a link to somewhere else while another member's pull runs. The names we
use are predictable (``ingest/sha256-<hex>``, ``locks/sha256-<hex>.lock``). Following such a link
as root would let one member chmod, truncate, fill or create another user's files.

So the store never trusts a name: each of its folders is opened once, from the cache root down,
without following links (``O_NOFOLLOW | O_DIRECTORY``), and files are opened, made, linked and
removed *relative to that descriptor*: a folder swapped later redirects nothing. A file is opened
with ``O_NOFOLLOW`` (a link is refused) and ``O_NONBLOCK`` (a FIFO cannot hang us), and is used only
when ``fstat`` says it is a regular file on the cache's file system. New files are made with
``O_EXCL``; modes are changed through the descriptor (``fchmod``), never through a path; a blob is
published by linking the descriptor we wrote (``/proc/self/fd``), not the name we wrote it under.
What stays trusted is the cache root itself, which the user named and root set up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cache.errors import LayerhoardError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")
_CREATE_TRIES = 16  # a name that is replaced this often while we make it is an attack: give up


class UnsafeFile(LayerhoardError):
    """A name in the cache that is not a regular file of the cache: a link, a FIFO, a device."""


def kind_of(mode: int) -> str:
    """What a file's mode says it is, for messages."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


class Folder:
    """A folder of the cache held open: the file operations of the store, each relative to it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path  # for messages and listings; never used to reach a file
        self.fd = fd
        self.device = os.fstat(fd).st_dev

    @classmethod
    def at(cls, root: Path, *parts: str, make: bool = True, mode: int | None = None) -> Folder:
        """Open ``root/parts...``: ``root`` as the user named it, each part below it without following
        a link. Missing parts are made (with ``mode`` when given: a shared cache's folder mode)."""
        top = cls(root, os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        if not parts:
            return top
        try:
            return top.child(*parts, make=make, mode=mode)
        finally:
            top.close()

    def child(self, *parts: str, make: bool = True, mode: int | None = None) -> Folder:
        """The folder ``parts`` below this one, opened without following a link (made when missing)."""
        fd, path = os.dup(self.fd), self.path
        for part in parts:
            path = path / part
            fd = _open_child(fd, part, path, make, mode)  # closes the parent, whatever happens
        return Folder(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- looking -------------------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result | None:
        """The entry ``name`` itself (a link is not followed), or None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self.fd) as entries:
            yield from entries

    # -- opening -------------------------------------------------------------------------------
    def open(self, name: str, flags: int = os.O_RDONLY) -> int:
        """Open the existing regular file ``name`` (on the cache's file system); refuse anything else
        with :class:`UnsafeFile`. FileNotFoundError when there is none."""
        return self.open_stat(name, flags)[0]

    def open_stat(self, name: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
        """:meth:`open`, with the ``fstat`` it checked."""
        try:
            fd = os.open(name, flags | _READ_FLAGS, dir_fd=self.fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeFile(f"{self.path / name} is a symbolic link, not a file of the cache") from None
            if error.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
                raise UnsafeFile(f"{self.path / name} is a FIFO, not a file of the cache") from None
            raise
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_dev == self.device:
            return fd, info
        os.close(fd)
        if stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{self.path / name} is on another file system than the cache")
        raise UnsafeFile(f"{self.path / name} is {kind_of(info.st_mode)}, not a file of the cache")

    def create(self, name: str, mode: int = 0o644) -> int:
        """Make ``name`` anew (``O_EXCL``), removing whatever stood under that name: a leftover of a
        killed writer, or something planted. Returns a read-write descriptor of the new file."""
        for _ in range(_CREATE_TRIES):
            try:
                return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode, dir_fd=self.fd)
            except FileExistsError:
                self.remove(name)
        raise UnsafeFile(f"cannot make {self.path / name}: something keeps putting a file there")

    def open_or_create(self, name: str, mode: int = 0o644) -> int:
        """A read-only descriptor of the regular file ``name``, made empty when missing (lock files,
        in-use marks). Anything else under that name is removed and replaced."""
        for _ in range(_CREATE_TRIES):
            try:
                fd = os.open(name, os.O_CREAT | _READ_FLAGS, mode, dir_fd=self.fd)
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise
                self.remove(name)
                continue
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
            self.remove(name)
        raise UnsafeFile(f"cannot make {self.path / name}: something keeps putting a file there")

    def reopen(self, fd: int, name: str, flags: int) -> int:
        """Another descriptor of the very file open as ``fd`` (called ``name`` here), with ``flags``."""
        if _PROC_FD.is_dir():
            return os.open(f"{_PROC_FD}/{fd}", flags | os.O_CLOEXEC)
        again = self.open(name, flags)
        info, mine = os.fstat(again), os.fstat(fd)
        if (info.st_dev, info.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(again)
            raise UnsafeFile(f"{self.path / name} was replaced while we used it")
        return again

    # -- changing ------------------------------------------------------------------------------
    def remove(self, name: str) -> bool:
        """Remove the entry ``name`` (a link itself, never what it points at). True when removed."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            os.rmdir(name, dir_fd=self.fd)  # an empty folder planted there; a full one raises
        return True

    def remove_if_same(self, name: str, fd: int) -> None:
        """Remove ``name`` only while it still names the file open as ``fd`` (ours)."""
        info, mine = self.lstat(name), os.fstat(fd)
        if info is not None and (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino):
            self.remove(name)

    def link(self, fd: int, name: str, source: tuple[Folder, str] | None = None) -> None:
        """Give the open file ``fd`` the name ``name`` here (FileExistsError when taken). The link is
        made to the descriptor's own inode, whatever its old name now points at."""
        if _PROC_FD.is_dir():
            os.link(f"{_PROC_FD}/{fd}", name, dst_dir_fd=self.fd, follow_symlinks=True)
            return
        if source is None:  # no /proc and no name to link: the caller copies instead
            raise OSError(errno.EXDEV, "cannot link an open file without /proc mounted")
        folder, old = source  # no /proc: link the old name, once it is checked to be our file
        info, mine = folder.lstat(old), os.fstat(fd)
        if info is None or (info.st_dev, info.st_ino) != (mine.st_dev, mine.st_ino):
            raise UnsafeFile(f"{folder.path / old} was replaced while it was being written")
        os.link(old, name, src_dir_fd=folder.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def rename(self, name: str, target: Folder, new: str) -> None:
        os.rename(name, new, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def fsync(self) -> None:
        """Make the links, renames and removals in this folder survive a power loss."""
        os.fsync(self.fd)

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive ``flock`` on the lock file ``name`` (made when missing).

        Yields True when held; with ``blocking=False`` it yields False instead of waiting. gc may
        remove an idle lock file, so after locking we check that the name still is our file and
        start over if not: two holders can never exist. The file is opened read-only (flock needs
        no write access), so another member's lock file in a shared cache works.
        """
        while True:
            fd = self.open_or_create(name, 0o664)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                info, mine = self.lstat(name), os.fstat(fd)
                if info is None or (info.st_dev, info.st_ino) != (mine.st_dev, mine.st_ino):
                    continue  # removed (or replaced) while we waited: lock the new one
                yield True
                return
            finally:
                os.close(fd)  # closing the descriptor releases the lock


def _open_child(parent: int, name: str, path: Path, make: bool, mode: int | None) -> int:
    """Open the folder ``name`` below the descriptor ``parent`` (which is closed), not following links;
    made first when missing and ``make`` (with ``mode``: a shared cache's folder mode)."""
    try:
        try:
            return _open_folder(parent, name, path)
        except FileNotFoundError:
            if not make:
                raise
        with contextlib.suppress(FileExistsError):  # another process may make it meanwhile
            os.mkdir(name, 0o777, dir_fd=parent)
            if mode is not None:  # mkdir applied the umask; fchmod below, through the descriptor
                fd = _open_folder(parent, name, path)
                with contextlib.suppress(PermissionError):
                    os.fchmod(fd, mode)
                return fd
        return _open_folder(parent, name, path)
    finally:
        os.close(parent)


def _open_folder(parent: int, name: str, path: Path) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFile(
                f"{path} is not a folder (a symbolic link or a file): a cache's folders must be "
                "real folders; remove it and run again"
            ) from None
        raise
