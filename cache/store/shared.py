"""A cache folder shared by a team: group-writable folders that pass their group on.

The setup (docs/shared-cache.md) is a root folder made with ``install -d -m 2775 -g builders DIR``.
Its setgid bit is the signal: every folder the store creates below it gets the root's mode (so
group members can add and remove entries, and the group keeps being inherited), whatever the
creating user's umask. Files need no group write, with two exceptions handled here: blobs are
read-only for everyone anyway (0444), lock files are locked through read-only descriptors
(fsutil.file_lock), and ingest leftovers of another user are replaced, not resumed. The SQLite
files of the metadata index must be group-writable, so :func:`share_meta` makes them so.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def shared_mode(root: Path) -> int | None:
    """The permission bits new folders get when ``root`` is a shared (setgid) cache folder, else None."""
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        return None
    return stat.S_IMODE(mode) if mode & stat.S_ISGID else None


def make_dirs(path: Path, root: Path) -> None:
    """``mkdir -p path``; below a shared ``root``, each folder made here gets the root's mode."""
    mode = shared_mode(root)
    if mode is None:
        path.mkdir(parents=True, exist_ok=True)
        return
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it: it sets the mode
        with contextlib.suppress(PermissionError):
            os.chmod(folder, mode)  # mkdir applied the umask; setgid was inherited


def share_meta(meta: Path, root: Path) -> None:
    """Give the group write access to the metadata index files this user created (shared cache only)."""
    if shared_mode(root) is None:
        return
    uid = os.geteuid()
    for entry in os.scandir(meta):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            info = entry.stat(follow_symlinks=False)
            if info.st_uid == uid and (info.st_mode & 0o060) != 0o060:
                os.chmod(entry.path, stat.S_IMODE(info.st_mode) | 0o060)
