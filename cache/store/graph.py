"""The edges of the content graph that no manifest names, kept so that gc and prune walk them.

A manifest names its config and layers, an index its manifests; :func:`cache.store.images.blobs_of`
follows those by reading the manifests. Two kinds of edge are known only to the cache:

- ``derived``: a blob to the blobs made from it here. An export that transcodes a layer stores the
  new blob and links it from the layer; the transcoded manifest is linked from the original. They
  live as long as an image that reaches the original, so the next export reuses them instead of
  compressing again (gc used to sweep them as orphans).
- ``referrer``: a subject manifest to the manifests whose ``subject`` names it (signatures, SBOMs,
  attestations pushed beside an image; the OCI 1.1 referrers API answers from these edges). A
  referrer lives as long as its subject is reachable, and is walked like any manifest.
- ``cosign``: a manifest to the manifests cosign keeps under its tags ``sha256-<hex>.sig``, ``.att``
  and ``.sbom`` (noted with the suffix). Those name no subject, so only the tag ties them to the
  image: serve answers the tag from this edge, and they live and go with the image like referrers.

Edges are kept in the metadata index (``edge/<kind>/<parent>``), loaded in one query per kind by
:meth:`ContentGraph.load`. Only blobs hashed and stored here are ever linked. What it costs: one
index write per edge made, one range query per kind when gc or prune start. A rebuilt index finds
the referrer edges again by reading every stored manifest's ``subject``, and copies the cosign
edges from the old database when it can still be read; derived edges are lost then, and their
blobs reclaimed as the cache they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cache.model.digest import Digest
from cache.store.blobstore import BlobStore

DERIVED = "derived"
REFERRER = "referrer"
COSIGN = "cosign"
COSIGN_SUFFIXES = ("sig", "att", "sbom")  # cosign's tags: signatures, attestations, attached SBOMs


@dataclass
class ContentGraph:
    derived: dict[str, dict[str, str]] = field(default_factory=dict)
    referrers: dict[str, dict[str, str]] = field(default_factory=dict)
    cosign: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: BlobStore) -> ContentGraph:
        return cls(store.index.edges(DERIVED), store.index.edges(REFERRER), store.index.edges(COSIGN))

    def has_edges(self, digest: Digest) -> bool:
        """Whether any edge leaves ``digest``: false for nearly every blob, and cheap to ask (a gc
        or prune asks it of each of 100,000 blobs)."""
        return digest in self.derived or digest in self.referrers or digest in self.cosign

    def derived_from(self, digest: Digest) -> list[Digest]:
        return [Digest(child[7:]) for child in self.derived.get(digest, {})]

    def referrers_of(self, digest: Digest) -> list[Digest]:
        return [Digest(child[7:]) for child in self.referrers.get(digest, {})]

    def attached_to(self, digest: Digest) -> list[Digest]:
        """What travels with a manifest: its referrers and the manifests of its cosign tags."""
        return self.referrers_of(digest) + [Digest(child[7:]) for child in self.cosign.get(digest, {})]


def link_derived(store: BlobStore, source: Digest, made: Digest) -> None:
    """``made`` was made here from ``source`` (a transcoded layer or manifest)."""
    if made != source:
        store.index.add_edge(DERIVED, source, made)


def link_referrer(store: BlobStore, subject: Digest, referrer: Digest, artifact_type: str = "") -> None:
    """The manifest ``referrer`` names ``subject`` as its subject (noted with its artifactType)."""
    store.index.add_edge(REFERRER, subject, referrer, artifact_type)


def unlink_referrer(store: BlobStore, subject: Digest, referrer: Digest) -> None:
    """``referrer`` was deleted (serve's DELETE): its subject no longer keeps it, nor lists it."""
    store.index.remove_edge(REFERRER, subject, referrer)


def referrers(store: BlobStore, subject: Digest) -> dict[Digest, str]:
    """The referrers of one manifest, with their artifactType: one index read."""
    return {Digest(child[7:]): note for child, note in store.index.edges_of(REFERRER, subject).items()}


def link_cosign(store: BlobStore, subject: Digest, manifest: Digest, suffix: str) -> None:
    """``manifest`` is what cosign's tag ``sha256-<hex>.<suffix>`` of ``subject`` holds. cosign
    replaces the manifest when it signs again, so the tag's earlier manifest is unlinked."""
    for child, note in cosign_tags(store, subject).items():
        if note == suffix and child != manifest:
            store.index.remove_edge(COSIGN, subject, child)
    store.index.add_edge(COSIGN, subject, manifest, suffix)


def cosign_tags(store: BlobStore, subject: Digest) -> dict[Digest, str]:
    """The manifests of ``subject``'s cosign tags, with their suffix (sig, att, sbom): one index read."""
    return {Digest(child[7:]): note for child, note in store.index.edges_of(COSIGN, subject).items()}
