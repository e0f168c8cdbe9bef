"""A locked image's referrers and cosign-tag manifests, fetched by the digests its lock file lists.

Discovery (cache/ingest/referrers.py) asks a registry what refers to a manifest: the referrers API,
the tag schema's ``sha256-<hex>`` tag, cosign's ``.sig``/``.att``/``.sbom`` tags. A locked build
already knows the answer, so :class:`LockedReferrers` answers those questions from the lock, with
no request, and fetches each manifest by its digest (``GET /v2/<repo>/manifests/<digest>``), then
its blobs. The rest (bounds, checks, storing blobs before the manifest, linking the edge) is
discovery's own :func:`~cache.ingest.referrers.fetch_referrers`. Cost: one manifest request per
locked referrer the cache lacks, plus its blobs; none when all are cached.
"""

from __future__ import annotations

from collections.abc import Callable

from cache.delivery.lock import LockedImage
from cache.errors import DeliveryError, DigestMismatch, LayerhoardError
from cache.ingest.pull import ReferrerOptions
from cache.ingest.referrers import Listing, RegistryReferrers, fetch_referrers
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import Descriptor, parse_manifest_or_index
from cache.registry.client import RegistryClient
from cache.store.attachments import cosign_tag
from cache.store.blobstore import BlobStore


class LockedReferrers:
    """What the lock says refers to each manifest, as a ReferrerSource of cache/ingest/referrers.py."""

    def __init__(self, store: BlobStore, registry: RegistryReferrers, image: LockedImage) -> None:
        self.store = store
        self.registry = registry
        self.image = image
        self._fetched: dict[Digest, bytes] = {}

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int:
        return self.registry.fetch(descriptor, offset, on_chunk, on_restart)

    def listing(self, subject: Digest, types: tuple[str, ...]) -> Listing:
        entries = []
        for digest, note in self.image.referrers.items():
            if note.subject == subject and note.via == "referrer":
                raw = self.manifest(digest)
                kind = parse_manifest_or_index(raw, what=f"referrer {digest}").media_type
                entries.append((Descriptor(kind, digest, len(raw)), note.artifact_type))
        return Listing(entries, "lock")

    def tagged(self, tag: str) -> bytes | None:
        for digest, note in self.image.referrers.items():
            if note.via.startswith("cosign:") and tag == cosign_tag(note.subject, note.via[len("cosign:"):]):
                return self.manifest(digest)
        return None

    def manifest(self, digest: Digest) -> bytes:
        """The manifest's bytes: from the store when there, else fetched once by digest and checked."""
        if self.store.has(digest):
            return self.store.read_bytes(digest)
        if digest not in self._fetched:
            raw = self.registry.manifest(digest)
            if sha256_of(raw) != digest:
                raise DigestMismatch(f"{self.image.name}: referrer {digest} has digest {sha256_of(raw)}")
            self._fetched[digest] = raw
        return self._fetched[digest]


def fetch_locked_referrers(store: BlobStore, image: LockedImage, *, insecure: bool = False) -> None:
    """Bring the referrers ``image``'s lock lists and the cache lacks; a failure names the image."""
    if all(store.has(digest) for digest in image.referrers):
        return  # a cached locked build makes no request
    ref = image.ref
    client = RegistryClient(ref.registry, insecure=insecure)
    try:
        source = LockedReferrers(store, RegistryReferrers(client, ref.repository), image)
        fetch_referrers(store, source, image.manifests(), f"docker://{ref}", ReferrerOptions())
    except LayerhoardError as error:
        raise DeliveryError(f"a locked referrer cannot be had: {error}") from None
    finally:
        client.close()
