"""Pulling from an OCI registry into the store.

Cost model: a pull of a tag whose image is stored costs one manifest request; a pull by digest
that is stored, or any pull with ``offline``, costs none. Every manifest's digest is checked
against its bytes, every layer's digest and diff_id while it streams.

Manifests and blobs come from an :class:`Origin`: the registry itself (:class:`RegistryOrigin`),
or the team's remote tier in front of it (cache/remote/source.py wraps the registry's origin), so
this module never asks which one it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from cache.errors import BlobNotFound, DigestMismatch, ImageNotFound, InvalidManifest, SizeMismatch
from cache.ingest.commit import Arrival, commit
from cache.ingest.pull import ReferrerOptions
from cache.ingest.report import LayerReport, PullReport
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from cache.model.refs import ImageRef, RegistrySource, Source
from cache.progress import ProgressFactory, no_progress
from cache.registry.client import RegistryClient
from cache.sources import DEFAULT_JOBS
from cache.store.blobstore import BlobStore
from cache.store.diffids import reported_diff_id
from cache.store.images import missing_blobs

# A cached pull loads none of the fetching machinery (the BlobPuller, referrer discovery): each
# is imported where a pull has something to fetch.
if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions
    from cache.ingest.referrers import RegistryReferrers
    from cache.registry.http import SpeedFloor


class Origin(Protocol):
    """Where a registry pull's manifests and blobs come from, and what that cost."""

    def top_manifest(self, platform: Platform | None, all_platforms: bool) -> tuple[bytes, str | None]: ...
    def manifest(self, digest: Digest) -> bytes: ...
    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int: ...
    def costs(self) -> tuple[int, int, int]: ...  # (bytes fetched, of which from the remote tier, requests)
    def pulled(self, store: BlobStore, recorded: Manifest | Index, name: str) -> None: ...
    def referrers(self) -> RegistryReferrers: ...  # where the image's signatures, SBOMs... are asked for


class RegistryOrigin:
    """The registry the reference names, through one client."""

    def __init__(self, client: RegistryClient, ref: ImageRef) -> None:
        self.client = client
        self.ref = ref

    def top_manifest(self, platform: Platform | None, all_platforms: bool) -> tuple[bytes, str | None]:
        return self.client.get_manifest(self.ref.repository, self.ref.reference)

    def manifest(self, digest: Digest) -> bytes:
        return self.client.get_manifest(self.ref.repository, str(digest))[0]

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int:
        return self.client.fetch_blob(self.ref.repository, descriptor.digest, offset, on_chunk, on_restart)

    def costs(self) -> tuple[int, int, int]:
        return self.client.bytes_received, 0, self.client.request_count

    def pulled(self, store: BlobStore, recorded: Manifest | Index, name: str) -> None:
        pass  # nothing to fill

    def referrers(self) -> RegistryReferrers:
        from cache.ingest.referrers import RegistryReferrers

        return RegistryReferrers(self.client, self.ref.repository)


class RegistryPullOptions(NamedTuple):
    platform: Platform | None = None
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    insecure: bool = False
    offline: bool = False
    progress: ProgressFactory = no_progress
    through: Callable[[Origin], Origin] | None = None  # the remote tier in front (cache/remote/source.py)
    floor: SpeedFloor | None = None  # None: the environment's, else the default (cache.registry.client.speed_floor)
    name: str | None = None  # the name to record, instead of the reference's own (a locked pull by digest)
    referrers: ReferrerOptions = ReferrerOptions()  # what travels with the image (cache/ingest/referrers.py)


def parse(text: str) -> RegistrySource:
    return RegistrySource(ImageRef.parse(text))


def pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    assert isinstance(source, RegistrySource)
    return pull_from_registry(store, source.ref, registry_options(options))


def registry_options(options: PullOptions) -> RegistryPullOptions:
    return RegistryPullOptions(
        platform=options.platform, all_platforms=options.all_platforms, jobs=options.jobs,
        insecure=options.insecure, offline=options.offline, progress=options.progress, floor=options.floor,
        name=options.name, referrers=options.referrers or ReferrerOptions(),
    )


def record_name(ref: ImageRef) -> str:
    """The name an image gets in index.json: ``registry/repo:tag``, or ``registry/repo@digest``."""
    return f"{ref.name}:{ref.tag}" if ref.tag else str(ref)


def pull_from_registry(
    store: BlobStore,
    ref: ImageRef,
    options: RegistryPullOptions | None = None,
    client: RegistryClient | None = None,
) -> PullReport:
    options = options or RegistryPullOptions()
    started = time.monotonic()
    name = options.name or record_name(ref)
    source = f"docker://{ref}"
    local = _stored_top(store, ref, name, options)
    if local is not None:
        report = commit(store, _arrival_from_store(store, source, local, options._replace(name=name)), [name], started)
        if options.offline or not options.referrers.refresh:
            return report
    elif options.offline:
        raise ImageNotFound(f"{name} is not in the cache, and --offline forbids fetching it")
    own_client = client is None
    client = client or RegistryClient(ref.registry, insecure=options.insecure, pool_size=options.jobs + 2,
                                      floor=options.floor)
    try:
        origin: Origin = RegistryOrigin(client, ref)
        if local is not None:  # stored, and its referrers asked for again (--refresh-referrers): of the origin
            from cache.ingest.referrers import add_registry_referrers
            from cache.store.attachments import image_manifests

            subjects = image_manifests(store, local.digest) if options.referrers.enabled else []
            add_registry_referrers(store, report, origin.referrers(), subjects, options.referrers)
            return report
        if options.through is not None:
            origin = options.through(origin)
        arrival = _pull_online(store, origin, ref, source, options)
        subjects = options.referrers.subjects(store, [arrival.top, *arrival.manifests])
        if subjects:  # before the name; a cached pull has none, and loads none of the fetching
            from cache.ingest.referrers import add_registry_referrers

            add_registry_referrers(store, arrival, origin.referrers(), subjects, options.referrers)
        report = commit(store, arrival, [name], started)
        origin.pulled(store, arrival.chosen or arrival.top, name)  # the remote is filled with them too
        return report
    finally:
        if own_client:
            client.close()


def _stored_top(store: BlobStore, ref: ImageRef, name: str, options: RegistryPullOptions) -> Manifest | Index | None:
    """The complete stored manifest/index to use without any request, or None."""
    digest = ref.digest
    if digest is None and options.offline:
        entry = store.image_descriptor(name)
        if entry is None:
            return None
        digest = Descriptor.from_json(entry, f"index.json entry {name}").digest
    raw = _stored(store, digest) if digest is not None else None
    if raw is None:
        return None
    top = parse_manifest_or_index(raw, what=f"stored manifest {digest}")
    chosen = _chosen_manifests(top, options)
    if any(not store.has(d.digest) or missing_blobs(store, d.digest) for d in chosen):
        return None
    return top


def _stored(store: BlobStore, digest: Digest) -> bytes | None:
    """A stored manifest's bytes; None when it is not stored (or a prune just evicted it): fetch it."""
    try:
        return store.read_bytes(digest)
    except BlobNotFound:
        return None


def _read(store: BlobStore, digest: Digest) -> bytes:
    """A manifest this pull stored or found stored; gone now means a prune evicted it meanwhile,
    and the pull dispatcher runs the pull once more."""
    try:
        return store.read_bytes(digest)
    except BlobNotFound:
        from cache.ingest.blobs import evicted_while_pulled

        raise evicted_while_pulled(digest) from None


def _chosen_manifests(top: Manifest | Index, options: RegistryPullOptions) -> list[Descriptor]:
    if isinstance(top, Manifest):
        return [top.descriptor()]
    if options.all_platforms:
        return list(top.manifests)  # attestations too, so the recorded index is complete
    return [top.choose(options.platform or Platform.host())]


def _pull_online(store: BlobStore, origin: Origin, ref: ImageRef, source: str, options: RegistryPullOptions) -> Arrival:
    raw, content_type = origin.top_manifest(options.platform, options.all_platforms)
    top = parse_manifest_or_index(raw, content_type, f"manifest of {ref}")
    if ref.digest is not None and top.digest != ref.digest:
        raise DigestMismatch(f"manifest of {ref} has digest {top.digest}, not the {ref.digest} asked for")
    from cache.ingest.blobs import BlobPuller

    puller = BlobPuller(store, origin.fetch, source, jobs=options.jobs, progress=options.progress)
    arrival = Arrival(source, top)
    manifests = []
    for descriptor in _chosen_manifests(top, options):
        manifest = top if isinstance(top, Manifest) else _child_manifest(store, origin, ref, descriptor)
        pulled = puller.pull_manifest(manifest)
        arrival.layers.extend(pulled.layers)
        arrival.platform = descriptor.platform or pulled.config.platform
        manifests.append(manifest)
    arrival.manifests = manifests
    if isinstance(top, Index) and not options.all_platforms:
        arrival.chosen = manifests[0]  # the report names the platform pulled; the name, the index
    elif isinstance(top, Index):
        arrival.platform = None
    arrival.bytes_fetched, arrival.bytes_from_remote, arrival.requests = origin.costs()
    return arrival


def _child_manifest(store: BlobStore, origin: Origin, ref: ImageRef, descriptor: Descriptor) -> Manifest:
    """A platform's manifest: from the store when there, else fetched by digest and checked."""
    raw = _stored(store, descriptor.digest)
    if raw is None:
        raw = origin.manifest(descriptor.digest)
        if sha256_of(raw) != descriptor.digest:
            raise DigestMismatch(f"manifest {descriptor.digest} of {ref}: content has digest {sha256_of(raw)}")
        if len(raw) != descriptor.size:
            raise SizeMismatch(f"manifest {descriptor.digest} of {ref}: {len(raw)} bytes, index says {descriptor.size}")
    parsed = parse_manifest_or_index(raw, descriptor.media_type, f"manifest {descriptor.digest}")
    if not isinstance(parsed, Manifest):
        raise InvalidManifest(f"manifest {descriptor.digest} of {ref}: nested indexes are not supported")
    return parsed


def _arrival_from_store(store: BlobStore, source: str, top: Manifest | Index, options: RegistryPullOptions) -> Arrival:
    """A stored image, described for the commit; nothing is fetched."""
    arrival = Arrival(source, top)
    for descriptor in _chosen_manifests(top, options):
        parsed = parse_manifest_or_index(_read(store, descriptor.digest), what=f"manifest {descriptor.digest}")
        if isinstance(parsed, Manifest):
            for layer in parsed.layers:
                diff_id, verified = reported_diff_id(store, layer.digest)
                arrival.layers.append(LayerReport(str(layer.digest), str(diff_id) if diff_id else None,
                                                  layer.size, layer.media_type, reused=True,
                                                  diff_id_verified=verified))
        if isinstance(top, Index) and not options.all_platforms:
            arrival.chosen, arrival.platform = parsed, descriptor.platform
    if isinstance(top, Manifest):  # its platform came from its config when it was first named
        entry = store.image_descriptor(options.name or "")
        known = Descriptor.from_json(entry, "index.json entry") if entry is not None else None
        arrival.platform = known.platform if known is not None and known.digest == top.digest else None
    return arrival
