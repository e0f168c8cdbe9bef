"""The documents ``ls``, ``du`` and ``prune --dry-run`` print, built once here for every reader.

    contents = Contents.read(store)
    image_list(store, contents)      # ls --json
    disk_usage(store, contents)      # du --json
    prune_preview(store, 20 << 30, contents)   # prune --max-size 20G --dry-run --json, without its lock

The command line prints what these return; the web view (cache/view) renders the very same
dictionaries, so a figure on the page is the figure of the command. :class:`Contents` is one look
at the store shared by the documents of one request: one listing of blobs/, one load of the
content graph, and each image's blobs walked once (walking reads every image's manifests, which
is what these cost: about 0.1 s for 2,000 images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cache.model.digest import Digest
from cache.store.blobstore import BlobStore
from cache.store.graph import ContentGraph
from cache.store.images import blobs_of
from cache.store.pins import pins as pinned_refs
from cache.upkeep.gc import BlobFacts, scan_blobs, usage
from cache.upkeep.prune import PrunePolicy, plan_prune


@dataclass
class Contents:
    """What several documents of one moment share: blob sizes, the graph, blobs per image root."""

    sizes: dict[Digest, int]
    graph: ContentGraph
    known: dict[Digest, set[Digest]] = field(default_factory=dict)
    mtimes: dict[Digest, float] = field(default_factory=dict)  # from the same listing as ``sizes``

    @classmethod
    def read(cls, store: BlobStore) -> Contents:
        sizes, mtimes = scan_blobs(store)
        return cls(sizes, ContentGraph.load(store), mtimes=mtimes)

    def blobs(self, store: BlobStore, root: Digest) -> set[Digest]:
        """Every blob ``root`` reaches (its manifests, config, layers, derived blobs, referrers)."""
        if root not in self.known:
            self.known[root] = set(blobs_of(store, root, self.graph))
        return self.known[root]

    def image_size(self, store: BlobStore, root: Digest) -> int:
        """The bytes of every blob an image reaches, shared ones included."""
        return sum(self.sizes.get(blob, 0) for blob in self.blobs(store, root))


def image_list(store: BlobStore, contents: Contents | None = None) -> dict[str, Any]:
    """``ls --json``: every image of index.json, in its order, with its size, record and pin."""
    contents = Contents.read(store) if contents is None else contents
    pins = pinned_refs(store)
    records = dict(store.index.images())  # one query, not one per image
    unverified, mismatched = _unsettled(store)
    rows = []
    for entry in store.index_entries():  # an entry whose digest does not parse is damage: left out
        ref = entry.name or ""
        record = records.get(ref) or {}
        blobs = contents.blobs(store, entry.digest)
        rows.append({
            "ref": ref,
            "digest": str(entry.digest),
            "size": contents.image_size(store, entry.digest),
            "media_type": entry.media_type,
            "platform": record.get("platform"),
            "source": record.get("source"),
            "last_used": record.get("last_used"),
            "pinned": ref in pins,
            "diff_ids_unverified": len(blobs & unverified),
            "diff_ids_mismatched": len(blobs & mismatched),
        })
    return {"images": rows}


def _unsettled(store: BlobStore) -> tuple[set[Digest], set[Digest]]:
    """Layers whose diff_id a pull left to check later, and layers whose bytes refuted their
    config's diff_id (cache/store/diffids.py)."""
    return set(store.index.pending_diff_ids()), set(store.index.refuted_diff_ids())


def disk_usage(store: BlobStore, contents: Contents | None = None) -> dict[str, Any]:
    """``du --json``: blob bytes, blobs, images, and the bytes layer sharing saves."""
    contents = Contents.read(store) if contents is None else contents
    result = usage(store, contents.sizes, contents.graph, contents.known)
    unverified, mismatched = _unsettled(store)
    return {"bytes": result.bytes, "blobs": result.blobs, "images": result.images,
            "image_bytes": result.image_bytes, "dedup_saved_bytes": result.dedup_saved,
            "diff_ids_unverified": len(unverified), "diff_ids_mismatched": len(mismatched)}


def prune_preview(store: BlobStore, max_size: int, contents: Contents | None = None) -> dict[str, Any]:
    """``prune --max-size MAX_SIZE --dry-run --json`` (the default grace, no keep rules): what a
    prune would evict and free now. Planned without prune's lock, so it writes nothing at all."""
    if contents is None:
        plan = plan_prune(store, PrunePolicy(max_size=max_size))
    else:  # the same listing of blobs/ the other documents used: sizes agree, and no second listing
        facts = BlobFacts.gather(store, (contents.sizes, contents.mtimes))
        plan = plan_prune(store, PrunePolicy(max_size=max_size), known=contents.known, facts=facts)
    plan.dry_run = True
    return plan.to_json()
