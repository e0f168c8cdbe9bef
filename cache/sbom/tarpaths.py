"""Tar member names made safe: normalised in memory, never followed out of the layer."""

from __future__ import annotations

import posixpath

from cache.sbom.text import printable

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def normalise(name: str) -> str | None:
    """``./usr//lib/../bin/`` → ``usr/bin``; None for the root itself or a path that climbs out (``../x``).

    A name that is not UTF-8 keeps its bytes as readable escapes (``bad\xff``): see cache/sbom/text.py.
    """
    if "\0" in name:
        return None
    path = posixpath.normpath(printable(name).lstrip("/"))
    if path in (".", "") or path == ".." or path.startswith("../"):
        return None
    return path


def is_under(path: str, folder: str) -> bool:
    return path.startswith(folder + "/") if folder else True


def ancestors(path: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``: the folders a file replacing a folder could sit at."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def resolve(path: str, symlinks: dict[str, str], limit: int = 40) -> str:
    """Follow symlinks in ``path`` inside the merged tree, chroot-style: ``..`` stops at the root.

    Only the merged tree's own symlink table is consulted, so resolution can never leave the image.
    """
    parts = path.split("/")
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/".join([*done, part])
        target = symlinks.get(candidate)
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > limit:
            return candidate  # a loop: give up where we are
        if target.startswith("/"):
            done = []
        parts = target.split("/") + parts
    return "/".join(done)
