"""prune: evict whole images, least recently used first, then the blobs no kept image needs.

BuildKit's gc policies are the model for control (a size cap, a free-space floor, a keep
duration); containerd's mark-and-sweep with grace periods the model for safety:

- never evicted: a pinned image, a ``--keep`` image, an image used within the keep duration;
- never deleted: a blob any kept image (or pin) reaches; a blob with a write in progress (its
  digest lock is held, or a fresh ingest file exists); an orphan written or used within the grace
  period (a pull in progress has stored its blobs but not yet recorded its image); a blob of an
  evicted image that was used after that image was (a pull in progress reuses it).

A prune is planned first (:func:`plan_prune`, which also serves ``--dry-run``) and then applied
(:func:`apply_prune`) in one critical section under index.json's lock: the evicted images leave
index.json, then every planned blob is checked again (still unreached, still idle) and deleted.
record_image checks an image's blobs under the same lock, so a pull racing a prune either
records its image before the sweep (and its blobs stay) or finds a blob gone and pulls again.
Prunes run one at a time (locks/prune.lock).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cache.errors import BlobNotFound, ImageNotFound, InvalidDigest, LayerhoardError
from cache.formats.index_json import ref_name_of
from cache.model.digest import Digest, parse_digest
from cache.model.refs import DaemonSource, ImageRef, RegistrySource, daemon_image_name, parse_source
from cache.store.blobstore import BlobStore
from cache.store.graph import ContentGraph
from cache.store.images import blobs_of
from cache.store.pins import pins as pinned_refs
from cache.upkeep.gc import BlobFacts, in_use, scan_blobs, sweep

DEFAULT_PRUNE_GRACE = 600.0  # a pull that stored blobs 10 minutes ago and has not recorded them is dead
# A pull touches its blobs just before or just after recording its image; only a use clearly after
# the image's own last use means another pull is reusing the blob right now. (Missing that only
# costs the racing pull a retry: record_image's check under index.json's lock keeps it correct.)
REUSE_SLACK = 30.0


@dataclass(frozen=True)
class PrunePolicy:
    """What to evict. With no limit and not ``evict_all`` nothing but idle orphans goes."""

    max_size: int | None = None  # bytes the store may hold afterwards
    min_free_space: int | None = None  # bytes the file system must have free afterwards
    keep_duration: float | None = None  # seconds: images used more recently are kept
    keep: frozenset[str] = frozenset()  # refs (as index.json names them) that are kept
    evict_all: bool = False  # evict every image that is not protected
    grace: float = DEFAULT_PRUNE_GRACE

    @property
    def has_limit(self) -> bool:
        return self.evict_all or self.max_size is not None or self.min_free_space is not None


@dataclass
class ImageEntry:
    ref: str
    digest: Digest
    last_used: float
    blobs: set[Digest]
    protected: str | None = None  # why it is kept: "pinned", "kept", "recent"

    def to_json(self, sizes: dict[Digest, int]) -> dict[str, Any]:
        return {"ref": self.ref, "digest": str(self.digest), "last_used": self.last_used,
                "size": sum(sizes.get(d, 0) for d in self.blobs)}


@dataclass
class PrunePlan:
    """What a prune removes (planned, or done). ``bytes_before``/``bytes_after`` are blob bytes."""

    images: list[dict[str, Any]] = field(default_factory=list)
    blobs: list[tuple[Digest, int]] = field(default_factory=list)
    cutoffs: dict[Digest, float] = field(default_factory=dict)  # in use if written or used after this
    bytes_before: int = 0
    protected: dict[str, str] = field(default_factory=dict)  # ref -> why it was kept
    dry_run: bool = False
    freed_bytes: int = 0  # the sum of the sizes in ``blobs``, kept as they are added (10,000 images)

    def add_blob(self, digest: Digest, size: int, cutoff: float) -> None:
        self.blobs.append((digest, size))
        self.cutoffs[digest] = cutoff
        self.freed_bytes += size

    @property
    def bytes_after(self) -> int:
        return self.bytes_before - self.freed_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "images": self.images,
            "blobs": [{"digest": str(d), "size": size} for d, size in self.blobs],
            "freed_bytes": self.freed_bytes,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "protected": self.protected,
        }


# -- names ---------------------------------------------------------------------------------------
def resolve_ref(store: BlobStore, text: str) -> str:
    """The index.json name ``text`` means: as written (``ls`` names), else normalised the way pull
    records it (``alpine`` → ``docker.io/library/alpine:latest``, ``docker-daemon:app:1`` →
    ``docker-daemon:docker.io/library/app:1``). Raises ImageNotFound for an image that is not cached."""
    stored = {entry.name for entry in store.index_entries()}
    for candidate in _candidates(text):
        if candidate in stored:
            return candidate
    raise ImageNotFound(f"{text} is not in the cache (`layerhoard ls` lists the cached names)")


def _candidates(text: str) -> Iterator[str]:
    yield text
    try:
        source = parse_source(text)
    except LayerhoardError:
        return
    if isinstance(source, RegistrySource):
        ref = source.ref
        if ref.tag:
            yield f"{ref.name}:{ref.tag}"  # what a registry pull records (cache.sources.registry.record_name)
        yield str(ref)
    elif isinstance(source, DaemonSource):
        with contextlib.suppress(LayerhoardError):
            yield daemon_image_name(str(ImageRef.parse(source.name)))


# -- planning ------------------------------------------------------------------------------------
def blob_sizes(store: BlobStore) -> dict[Digest, int]:
    return scan_blobs(store)[0]


def free_space(store: BlobStore) -> int:
    stat = os.statvfs(store.root)
    return stat.f_bavail * stat.f_frsize


def _entries(store: BlobStore, known: dict[Digest, set[Digest]], graph: ContentGraph) -> list[ImageEntry]:
    out = []
    used = store.index.last_used_of_images()  # one query, not one per image
    for entry in store.index_entries():
        ref, digest = entry.name or "", entry.digest
        last_used = used.get(ref, 0.0)
        if not last_used:  # no record (a rebuilt or lost index): the manifest's age stands in
            with contextlib.suppress(BlobNotFound):
                last_used = store.stat(digest).st_mtime
        if digest not in known:
            known[digest] = set(blobs_of(store, digest, graph))
        out.append(ImageEntry(ref, digest, last_used, known[digest]))
    return out


def plan_prune(store: BlobStore, policy: PrunePolicy, now: float | None = None,
               known: dict[Digest, set[Digest]] | None = None, facts: BlobFacts | None = None) -> PrunePlan:
    """What a prune with ``policy`` would remove now (nothing is changed). ``known`` and ``facts``:
    blobs per root and blob facts the caller gathered just now (the web view's preview)."""
    now = time.time() if now is None else now
    known = {} if known is None else known
    cutoff = now - policy.grace
    facts = BlobFacts.gather(store) if facts is None else facts
    sizes = facts.sizes
    plan = PrunePlan(bytes_before=sum(sizes.values()))
    graph = ContentGraph.load(store)
    images = _entries(store, known, graph)
    pins = pinned_refs(store)
    refcount: dict[Digest, int] = dict.fromkeys(sizes, 0)
    for ref in pins:  # a pinned image's blobs stay even if index.json lost the image
        record = store.index.image(ref) or {}
        with contextlib.suppress(InvalidDigest):
            digest = parse_digest(record.get("digest"))  # type: ignore[arg-type]
            for blob in known.setdefault(digest, set(blobs_of(store, digest, graph))):
                refcount[blob] = refcount.get(blob, 0) + 1
    for image in images:
        if image.ref in pins:
            image.protected = "pinned"
        elif image.ref in policy.keep:
            image.protected = "kept"
        elif policy.keep_duration is not None and now - image.last_used < policy.keep_duration:
            image.protected = "recent"
        for blob in image.blobs:
            refcount[blob] = refcount.get(blob, 0) + 1
    plan.protected = {image.ref: image.protected for image in images if image.protected}

    def release(digests: list[Digest], since: float) -> None:
        for digest in digests:
            if digest in sizes and refcount.get(digest) == 0 and not in_use(store, digest, since, facts):
                plan.add_blob(digest, sizes[digest], since)

    release(sorted(d for d, count in refcount.items() if count == 0), cutoff)  # idle orphans always go
    disk_free = free_space(store) if policy.min_free_space is not None else 0
    for image in sorted((i for i in images if not i.protected), key=lambda i: (i.last_used, i.ref)):
        if not _over(policy, plan, disk_free):
            break
        plan.images.append(image.to_json(sizes))
        freed: list[Digest] = []
        for blob in sorted(image.blobs):
            refcount[blob] -= 1
            if refcount[blob] == 0:
                freed.append(blob)
        release(freed, image.last_used + REUSE_SLACK)
    return plan


def _over(policy: PrunePolicy, plan: PrunePlan, disk_free: int) -> bool:
    if policy.evict_all:
        return True
    if policy.max_size is not None and plan.bytes_after > policy.max_size:
        return True
    return policy.min_free_space is not None and disk_free + plan.freed_bytes < policy.min_free_space


# -- applying ------------------------------------------------------------------------------------
def prune(store: BlobStore, policy: PrunePolicy, *, dry_run: bool = False, wait: bool = True) -> PrunePlan | None:
    """Plan and (unless ``dry_run``) apply a prune. With ``wait=False`` returns None at once when
    another prune is running (the background policy prune)."""
    with store.locks_folder.lock("prune.lock", blocking=wait) as held:
        if not held:
            return None
        known: dict[Digest, set[Digest]] = {}
        plan = plan_prune(store, policy, known=known)
        if dry_run:
            plan.dry_run = True
            return plan
        return apply_prune(store, plan, known)


def apply_prune(store: BlobStore, plan: PrunePlan, known: dict[Digest, set[Digest]]) -> PrunePlan:
    """Carry out ``plan``; what was really removed is returned (a plan step whose image was used or
    re-pointed meanwhile, or whose blob became needed or busy, is skipped)."""
    done = PrunePlan(bytes_before=plan.bytes_before, protected=plan.protected)
    planned = {image["ref"]: image for image in plan.images}
    with store.index_json_lock():
        kept, evicted = [], []
        for entry in store.images():
            ref = ref_name_of(entry) or ""
            image = planned.get(ref)
            record = (store.index.image(ref) or {}) if image is not None else {}
            used_since = float(record.get("last_used") or 0) > image["last_used"] if image else False
            if image is not None and entry.get("digest") == image["digest"] and not used_since:
                evicted.append(image)
            else:
                kept.append(entry)
        if evicted:
            store.replace_images(kept)
            for image in evicted:
                store.index.drop_image(image["ref"])
        done.images = evicted
        done.blobs = sweep(store, [(digest, plan.cutoffs[digest]) for digest, _ in plan.blobs], known)
        done.freed_bytes = sum(size for _, size in done.blobs)
    return done
