"""Keeping the store tidy: usage figures and garbage collection.

gc is mark-and-sweep from the roots (every image in index.json and every pin): blobs no root
reaches, ingest files and lock files older than the grace period are removed. The grace period
protects a pull that has stored its blobs but not yet recorded its image.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from cache.digest import Digest, parse_digest
from cache.errors import InvalidDigest
from cache.fsutil import file_lock
from cache.images import blobs_of
from cache.store import BlobStore

DEFAULT_GRACE = 3600.0


@dataclass
class Usage:
    blobs: int = 0
    bytes: int = 0
    images: int = 0
    image_bytes: int = 0  # what the images would take with no sharing between them

    @property
    def dedup_saved(self) -> int:
        return max(0, self.image_bytes - self.bytes)


def usage(store: BlobStore) -> Usage:
    result = Usage()
    sizes: dict[Digest, int] = {}
    for digest in store.digests():
        try:
            sizes[digest] = store.path(digest).stat().st_size
        except FileNotFoundError:
            continue
    result.blobs, result.bytes = len(sizes), sum(sizes.values())
    for root in image_roots(store):
        result.images += 1
        result.image_bytes += sum(sizes.get(d, 0) for d in blobs_of(store, root))
    return result


def image_roots(store: BlobStore) -> list[Digest]:
    roots = []
    for entry in store.images():
        try:
            roots.append(parse_digest(entry.get("digest")))  # type: ignore[arg-type]
        except InvalidDigest:
            continue
    return roots


def live_blobs(store: BlobStore) -> set[Digest]:
    live: set[Digest] = set()
    for root in image_roots(store):
        live.update(blobs_of(store, root))
    return live


@dataclass
class GcResult:
    removed_blobs: list[Digest] = field(default_factory=list)
    freed_bytes: int = 0
    removed_ingest: int = 0
    removed_locks: int = 0


def _older_than(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False


def gc(store: BlobStore, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcResult:
    result = GcResult()
    cutoff = time.time() - grace
    live = live_blobs(store)
    for digest in list(store.digests()):
        path = store.path(digest)
        if digest in live or not _older_than(str(path), cutoff):
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if dry_run or store.delete(digest):
            result.removed_blobs.append(digest)
            result.freed_bytes += size
    for entry in os.scandir(store.ingest_dir):
        if _older_than(entry.path, cutoff):
            result.removed_ingest += 1
            if not dry_run:
                _remove_unlocked_ingest(store, entry.name, entry.path)
    for entry in os.scandir(store.locks_dir):
        if entry.name.startswith("sha256-") and _older_than(entry.path, cutoff) and not dry_run:
            with file_lock(store.locks_dir / entry.name, blocking=False) as held:
                if held:
                    os.unlink(entry.path)  # lock holders re-check the inode, so this is safe
                    result.removed_locks += 1
    return result


def _remove_unlocked_ingest(store: BlobStore, name: str, path: str) -> None:
    """Remove a stale ingest file unless a writer holds its digest's lock right now."""
    if name.startswith("sha256-"):
        with file_lock(store.locks_dir / f"{name}.lock", blocking=False) as held:
            if held:
                _unlink(path)
    else:
        _unlink(path)  # tmp-<uuid> files of ingest_unknown: old ones are abandoned


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
