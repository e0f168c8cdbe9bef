"""What the web view shows, gathered from the documents that ``ls``, ``du``, ``stats`` and
``prune --dry-run`` print (cache.upkeep.documents, cache.upkeep.stats): the page's figures are
those documents' figures, and the few the commands do not print (platforms of an index, referrers,
the bytes only one image holds, which images share a blob, SBOM package counts) are derived here
from the same one look at the store (:class:`Contents`).

Costs: one blobs/ listing, one walk of each image's manifests, a handful of index queries; for
2,000 images about 0.2 s (bench/view.py). The prune preview plans a prune (another blobs/ listing)
only when a size was asked for. Nothing here writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cache.errors import BadViewRequest, InvalidDigest, LayerhoardError
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import Index, parse_manifest_or_index
from cache.sbom.stored import package_counts
from cache.store.blobstore import BlobStore
from cache.units import parse_size
from cache.upkeep.documents import Contents, disk_usage, image_list, prune_preview
from cache.upkeep.gc import Usage
from cache.upkeep.stats import stats, timeline

SHARED_BLOBS_SHOWN = 24  # columns of the sharing matrix: the blobs whose sharing saves the most
SHARED_IMAGES_SHOWN = 40  # its rows
BIGGEST_SHOWN = 25  # bars of the disk-use chart


@dataclass
class ImageFacts:
    row: dict[str, Any]  # the image's row of ``ls --json``, as it is
    kind: str  # the source's transport, as `ls` shows it
    platforms: list[str]
    referrers: list[str]  # the artifactType of each referrer (signatures, SBOMs, attestations)
    own_bytes: int  # bytes of blobs no other image reaches: what evicting it alone frees
    packages: int | None  # SBOM packages, when every layer has a scan record


@dataclass
class SharedBlob:
    digest: Digest
    size: int
    images: list[int]  # positions in ViewFacts.images

    @property
    def saved(self) -> int:
        """The bytes stored once instead of once per image."""
        return self.size * (len(self.images) - 1)


@dataclass
class ViewFacts:
    images: list[ImageFacts]
    du: dict[str, Any]  # du --json
    stats: dict[str, Any]  # stats --json
    days: list[dict[str, Any]]  # cache.upkeep.stats.timeline
    shared: list[SharedBlob]  # the most saving shared blobs
    shared_count: int  # blobs reached by more than one image
    max_size: str = ""  # as asked on the page
    prune: dict[str, Any] | None = None  # prune --max-size MAX_SIZE --dry-run --json
    made: float = field(default_factory=time.time)

    @property
    def biggest(self) -> list[ImageFacts]:
        return sorted(self.images, key=lambda image: -int(image.row["size"]))[:BIGGEST_SHOWN]


def gather(store: BlobStore, max_size: str = "") -> ViewFacts:
    """Everything the page shows now; ``max_size`` (like ``20G``) adds the prune preview."""
    limit = _limit(max_size)
    contents = Contents.read(store)
    listing = image_list(store, contents)["images"]
    usage = disk_usage(store, contents)  # walks every image once, into contents.known
    roots = [_root(row["digest"]) for row in listing]
    reach = {row["ref"]: contents.known.get(root, set()) if root else set()
             for row, root in zip(listing, roots, strict=True)}
    holders = _holders(contents, roots)
    counts = package_counts(store, reach)
    images = [_image(store, contents, row, root, holders, counts.get(row["ref"]))
              for row, root in zip(listing, roots, strict=True)]
    shared = sorted((SharedBlob(blob, contents.sizes.get(blob, 0), images) for blob, images in holders.items()
                     if len(images) > 1), key=lambda blob: (-blob.saved, blob.digest))
    facts = ViewFacts(images, usage, stats(store, _usage_of(usage)), timeline(store), shared[:SHARED_BLOBS_SHOWN],
                      len(shared), max_size.strip())
    if limit is not None:
        facts.prune = prune_preview(store, limit, contents)
    return facts


def _limit(max_size: str) -> int | None:
    if not max_size.strip():
        return None
    try:
        return int(parse_size(max_size.strip()))
    except ValueError as error:
        raise BadViewRequest(f"max_size: {error}") from None


def _root(digest: object) -> Digest | None:
    try:
        return parse_digest(digest)  # type: ignore[arg-type]
    except InvalidDigest:
        return None


def _usage_of(document: dict[str, Any]) -> Usage:
    """du's document as the Usage that stats() takes (the same walk, not a second one)."""
    return Usage(document["blobs"], document["bytes"], document["images"], document["image_bytes"])


def _holders(contents: Contents, roots: list[Digest | None]) -> dict[Digest, list[int]]:
    """Every blob an image reaches -> the positions of the images reaching it (an image named
    twice counts once: at its first name)."""
    holders: dict[Digest, list[int]] = {}
    seen: set[Digest] = set()
    for position, root in enumerate(roots):
        if root is None or root in seen:
            continue
        seen.add(root)
        for blob in contents.known.get(root, ()):
            holders.setdefault(blob, []).append(position)
    return holders


def _image(store: BlobStore, contents: Contents, row: dict[str, Any], root: Digest | None,
           holders: dict[Digest, list[int]], packages: int | None) -> ImageFacts:
    blobs = contents.known.get(root, set()) if root else set()
    own = sum(contents.sizes.get(blob, 0) for blob in blobs if len(holders[blob]) == 1)
    edges = contents.graph.referrers  # Digest is a str: looked up as it is
    referrers = sorted(note or "(no artifactType)" for blob in blobs if blob in edges for note in edges[blob].values())
    kind = str(row.get("source") or "-").split(":", 1)[0]  # as `ls` shows it
    return ImageFacts(row, kind, _platforms(store, row, root), referrers, own, packages)


def _platforms(store: BlobStore, row: dict[str, Any], root: Digest | None) -> list[str]:
    """An index's stored platforms (read from the index: ls shows only the one pulled first)."""
    media_type = str(row.get("media_type") or "")
    if root is not None and ("index" in media_type or "manifest.list" in media_type):
        try:
            parsed = parse_manifest_or_index(store.read_bytes(root), what=f"index of {row['ref']}")
        except LayerhoardError:
            parsed = None
        if isinstance(parsed, Index):
            return [str(entry.platform) for entry in parsed.manifests
                    if entry.platform is not None and store.has(entry.digest)]
    return [str(row["platform"])] if row.get("platform") else []
