"""Keeping the store tidy: usage figures and garbage collection.

gc is mark-and-sweep from the roots (every image in index.json and every pin): blobs no root
reaches, ingest files and lock files older than the grace period are removed. The grace period
protects a pull that has stored (or reused) its blobs but not yet recorded its image; the sweep
runs under index.json's lock, which record_image's completeness check takes too, so an image is
never recorded with a blob that is being deleted (the pull sees the blob gone and fetches again).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from cache.errors import InvalidDigest
from cache.model.digest import Digest, parse_digest
from cache.store.blobstore import BlobStore
from cache.store.folder import Folder
from cache.store.fsutil import remove_unless_in_use
from cache.store.graph import ContentGraph
from cache.store.images import blobs_of
from cache.store.pins import pins

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


def usage(store: BlobStore, sizes: dict[Digest, int] | None = None, graph: ContentGraph | None = None,
          known: dict[Digest, set[Digest]] | None = None) -> Usage:
    """Blobs, bytes and images now. ``sizes``, ``graph`` and ``known`` (blobs per root) are what a
    caller that asks several questions at once gathered already (cache.upkeep.documents)."""
    result = Usage()
    sizes = scan_blobs(store)[0] if sizes is None else sizes
    result.blobs, result.bytes = len(sizes), sum(sizes.values())
    graph = ContentGraph.load(store) if graph is None else graph
    known = {} if known is None else known
    for root in image_roots(store):
        result.images += 1
        if root not in known:
            known[root] = set(blobs_of(store, root, graph))
        result.image_bytes += sum(sizes.get(d, 0) for d in known[root])
    return result


def image_roots(store: BlobStore) -> list[Digest]:
    return [entry.digest for entry in store.index_entries()]  # unnamed entries too: another tool's


def pinned_roots(store: BlobStore) -> list[Digest]:
    """The manifests of pinned images (from their metadata records: also when index.json lost them)."""
    roots = []
    for ref in pins(store):
        record = store.index.image(ref) or {}
        try:
            roots.append(parse_digest(record.get("digest")))  # type: ignore[arg-type]
        except InvalidDigest:
            continue
    return roots


def live_blobs(store: BlobStore, known: dict[Digest, set[Digest]] | None = None) -> set[Digest]:
    """Every blob a root (an image in index.json, or a pin) reaches, through the content graph's
    derived and referrer edges too. ``known`` caches blobs_of per root."""
    known = {} if known is None else known
    live: set[Digest] = set()
    graph = ContentGraph.load(store)
    for root in image_roots(store) + pinned_roots(store):
        if root not in known:
            known[root] = set(blobs_of(store, root, graph))
        live.update(known[root])
    return live


def scan_blobs(store: BlobStore) -> tuple[dict[Digest, int], dict[Digest, float]]:
    """Size and mtime of every entry of blobs/ named by a digest: one listing, one lstat each."""
    sizes, mtimes = {}, {}
    for entry in store.blobs_folder.names():
        try:
            digest = parse_digest(f"sha256:{entry.name}")
            info = entry.stat(follow_symlinks=False)
        except (InvalidDigest, FileNotFoundError):
            continue
        sizes[digest], mtimes[digest] = info.st_size, info.st_mtime
    return sizes, mtimes


@dataclass
class BlobFacts:
    """What gc and prune ask of every blob, gathered at once rather than blob by blob (a cache of
    100,000 blobs): size and mtime from one listing of blobs/, the last use from one query of the
    index, and the writes in progress from one listing of ingest/."""

    sizes: dict[Digest, int]
    mtimes: dict[Digest, float]
    last_used: dict[str, float]  # by digest string
    ingest: dict[str, float]  # ingest file name -> mtime

    @classmethod
    def gather(cls, store: BlobStore,
               scanned: tuple[dict[Digest, int], dict[Digest, float]] | None = None) -> BlobFacts:
        """``scanned``: what :func:`scan_blobs` returned just now, when the caller has it."""
        sizes, mtimes = scan_blobs(store) if scanned is None else scanned
        ingest = {}
        for entry in store.ingest_folder.names():
            with contextlib.suppress(FileNotFoundError):
                ingest[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        return cls(sizes, mtimes, store.index.last_used_of_blobs(), ingest)

    @classmethod
    def one(cls, store: BlobStore, digest: Digest) -> BlobFacts:
        """The same facts of a single blob, asked now (a sweep's last look under the lock)."""
        info = store.blobs_folder.lstat(digest.hex)
        record = store.index.blob(digest) or {}
        partial = f"sha256-{digest.hex}"
        written = store.ingest_folder.lstat(partial)
        return cls({} if info is None else {digest: info.st_size}, {} if info is None else {digest: info.st_mtime},
                    {str(digest): float(record.get("last_used") or 0)},
                    {} if written is None else {partial: written.st_mtime})


def in_use(store: BlobStore, digest: Digest, cutoff: float, facts: BlobFacts | None = None) -> bool:
    """Whether a blob not reached from any root may still be wanted: written or used (a pull reused
    it) after ``cutoff``, or with a write of it in progress (a fresh ingest file). A pull in
    progress stores and touches its blobs before it records its image. ``facts`` answers from
    what was gathered at the start instead of asking again for each blob."""
    if facts is None:
        facts = BlobFacts.one(store, digest)
    if facts.mtimes.get(digest, cutoff) >= cutoff:  # written since (or not listed: gone or new)
        return True
    if facts.last_used.get(str(digest), 0.0) >= cutoff:
        return True
    return facts.ingest.get(f"sha256-{digest.hex}", 0.0) >= cutoff


def sweep(store: BlobStore, candidates: list[tuple[Digest, float]],
          known: dict[Digest, set[Digest]]) -> list[tuple[Digest, int]]:
    """Delete the candidates (digest, cutoff for :func:`in_use`) that no root reaches and that are
    not in use. The caller holds index.json's lock, so no image is recorded meanwhile
    (record_image checks its blobs under it); a blob whose digest lock is held (being written) is
    skipped, never waited for."""
    live = live_blobs(store, known)
    removed = []
    with store.index.batch():
        for digest, cutoff in candidates:
            if digest in live or in_use(store, digest, cutoff):
                continue
            info = store.blobs_folder.lstat(digest.hex)
            if info is not None and store.delete(digest, wait=False):
                removed.append((digest, info.st_size))
    return removed


@dataclass
class GcResult:
    removed_blobs: list[Digest] = field(default_factory=list)
    freed_bytes: int = 0
    removed_ingest: int = 0
    removed_locks: int = 0


def _older_than(folder: Folder, name: str, cutoff: float) -> bool:
    info = folder.lstat(name)  # the entry itself: a planted link says nothing of its target
    return info is not None and info.st_mtime < cutoff


def gc(store: BlobStore, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcResult:
    result = GcResult()
    cutoff = time.time() - grace
    known: dict[Digest, set[Digest]] = {}
    live = live_blobs(store, known)
    facts = BlobFacts.gather(store)
    candidates = [d for d in facts.sizes if d not in live and not in_use(store, d, cutoff, facts)]
    if dry_run:
        for digest in candidates:
            info = store.blobs_folder.lstat(digest.hex)
            if info is not None:
                result.freed_bytes += info.st_size
                result.removed_blobs.append(digest)
    elif candidates:
        with store.index_json_lock():
            removed = sweep(store, [(digest, cutoff) for digest in candidates], known)
        result.removed_blobs = [digest for digest, _ in removed]
        result.freed_bytes = sum(size for _, size in removed)
    for entry in store.ingest_folder.names():
        if _older_than(store.ingest_folder, entry.name, cutoff) and (
                dry_run or _remove_unlocked_ingest(store, entry.name)):
            result.removed_ingest += 1
    locks = store.locks_folder
    for entry in locks.names():
        if entry.name.startswith("sha256-") and _older_than(locks, entry.name, cutoff) and not dry_run:
            with locks.lock(entry.name, blocking=False) as held:
                if held:
                    locks.remove(entry.name)  # lock holders re-check the inode, so this is safe
                    result.removed_locks += 1
    return result


def _remove_unlocked_ingest(store: BlobStore, name: str) -> bool:
    """Remove a stale ingest file unless a writer is at it right now. True when removed. Nothing
    here is opened for reading but through :func:`remove_unless_in_use`, which refuses FIFOs."""
    if name.startswith("sha256-"):  # a resumable download: its writer holds the digest's lock
        with store.locks_folder.lock(f"{name}.lock", blocking=False) as held:
            if held:
                store.ingest_folder.remove(name)
            return held
    # tmp-*, spool-*, upload-*: their writers mark them in use until they are published or dropped
    return remove_unless_in_use(store.ingest_folder, name)
