"""Pulling from an OCI registry into the store.

Cost model: a pull of a tag whose image is stored costs one manifest request; a pull by digest
that is stored, or any pull with ``offline``, costs none. Every manifest's digest is checked
against its bytes, every layer's digest and diff_id while it streams.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

from cache.errors import BlobNotFound, DigestMismatch, ImageNotFound, InvalidManifest, SizeMismatch
from cache.ingest.blobs import BlobPuller, evicted_while_pulled
from cache.ingest.report import LayerReport, PullReport
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from cache.model.refs import ImageRef
from cache.progress import ProgressFactory, no_progress
from cache.registry.client import RegistryClient
from cache.sources import DEFAULT_JOBS
from cache.store.blobstore import BlobStore
from cache.store.images import missing_blobs, record_image

if TYPE_CHECKING:
    from cache.registry.http import SpeedFloor
    from cache.remote.tier import RemoteTier


class RegistryPullOptions(NamedTuple):
    platform: Platform | None = None
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    insecure: bool = False
    offline: bool = False
    progress: ProgressFactory = no_progress
    remote: RemoteTier | None = None  # the team's remote tier: asked before the origin (cache/remote/tier.py)
    floor: SpeedFloor | None = None  # None: the environment's, else the default (cache.registry.client.speed_floor)


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
    name = record_name(ref)
    source = f"docker://{ref}"
    local = _stored_top(store, ref, name, options)
    if local is not None:
        report = _report_from_store(store, name, source, local, options)
    else:
        if options.offline:
            raise ImageNotFound(f"{name} is not in the cache, and --offline forbids fetching it")
        own_client = client is None
        client = client or RegistryClient(ref.registry, insecure=options.insecure, pool_size=options.jobs + 2,
                                          floor=options.floor)
        try:
            report = _pull_online(store, client, ref, name, source, options)
        finally:
            if own_client:
                client.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report


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
        raise evicted_while_pulled(digest) from None


def _chosen_manifests(top: Manifest | Index, options: RegistryPullOptions) -> list[Descriptor]:
    if isinstance(top, Manifest):
        return [top.descriptor()]
    if options.all_platforms:
        return list(top.manifests)  # attestations too, so the recorded index is complete
    return [top.choose(options.platform or Platform.host())]


def _pull_online(
    store: BlobStore, client: RegistryClient, ref: ImageRef, name: str, source: str, options: RegistryPullOptions
) -> PullReport:
    remote = options.remote
    from_remote = remote.resolve_ref(ref, options.platform, options.all_platforms) if remote else None
    raw, content_type = from_remote or client.get_manifest(ref.repository, ref.reference)
    top = parse_manifest_or_index(raw, content_type, f"manifest of {ref}")
    if ref.digest is not None and top.digest != ref.digest:
        raise DigestMismatch(f"manifest of {ref} has digest {top.digest}, not the {ref.digest} asked for")

    def fetch(descriptor: Descriptor, offset: int, on_chunk, on_restart) -> int:  # type: ignore[no-untyped-def]
        return client.fetch_blob(ref.repository, descriptor.digest, offset, on_chunk, on_restart)

    served = remote.bytes_served if remote else 0
    puller = BlobPuller(store, remote.fetch_first(fetch) if remote else fetch, source, jobs=options.jobs,
                        progress=options.progress)
    layers: list[LayerReport] = []
    config_platform = None
    for descriptor in _chosen_manifests(top, options):
        manifest = top if isinstance(top, Manifest) else _child_manifest(store, client, ref, descriptor, remote)
        pulled = puller.pull_manifest(manifest)
        layers.extend(pulled.layers)
        config_platform = pulled.config.platform
        if manifest is not top:  # stored once its blobs are, so a stored manifest is always complete
            store.put_bytes(manifest.raw, manifest.media_type, source)
    store.put_bytes(top.raw, top.media_type, source)
    recorded, recorded_platform = _what_to_record(store, top, options)
    if isinstance(top, Manifest):
        recorded_platform = config_platform  # a plain manifest's platform is in its config
    record_image(store, name, top, platform=recorded_platform if top is recorded else None, source=source)
    if remote is not None and (from_remote is None or client.bytes_received):  # it lacked some: fill it
        remote.push_later(store, recorded, "docker", name, ref)
    report = PullReport(name, str(recorded.digest), str(recorded_platform) if recorded_platform else None, source)
    report.layers = layers
    report.bytes_from_remote = remote.bytes_served - served if remote else 0
    report.bytes_fetched = client.bytes_received + report.bytes_from_remote
    report.bytes_reused = sum(layer.size for layer in layers if layer.reused)
    report.requests = client.request_count
    return report


def _child_manifest(
    store: BlobStore, client: RegistryClient, ref: ImageRef, descriptor: Descriptor, remote: RemoteTier | None = None
) -> Manifest:
    """A platform's manifest: from the store when there, else fetched by digest (the remote first) and checked."""
    raw = _stored(store, descriptor.digest)
    if raw is None:
        found = remote.manifest_by_digest(descriptor.digest) if remote else None
        raw, _ = found or client.get_manifest(ref.repository, str(descriptor.digest))
        if sha256_of(raw) != descriptor.digest:
            raise DigestMismatch(f"manifest {descriptor.digest} of {ref}: content has digest {sha256_of(raw)}")
        if len(raw) != descriptor.size:
            raise SizeMismatch(f"manifest {descriptor.digest} of {ref}: {len(raw)} bytes, index says {descriptor.size}")
    parsed = parse_manifest_or_index(raw, descriptor.media_type, f"manifest {descriptor.digest}")
    if not isinstance(parsed, Manifest):
        raise InvalidManifest(f"manifest {descriptor.digest} of {ref}: nested indexes are not supported")
    return parsed


def _what_to_record(
    store: BlobStore, top: Manifest | Index, options: RegistryPullOptions
) -> tuple[Manifest | Index, Platform | None]:
    """What the pull reports: the index with --all-platforms, else the chosen platform's manifest.
    The name always points at what the reference pointed at (the index, kept whole even when only
    one platform was pulled), so a plain pull after --all-platforms never narrows it, and serve
    answers every platform's client with the index."""
    if isinstance(top, Manifest) or options.all_platforms:
        return top, None
    chosen = top.choose(options.platform or Platform.host())
    manifest = parse_manifest_or_index(_read(store, chosen.digest), what=f"manifest {chosen.digest}")
    return manifest, chosen.platform


def _report_from_store(
    store: BlobStore, name: str, source: str, top: Manifest | Index, options: RegistryPullOptions
) -> PullReport:
    """Record (or refresh) a stored image and describe it; nothing is fetched."""
    layers: list[LayerReport] = []
    for descriptor in _chosen_manifests(top, options):
        parsed = parse_manifest_or_index(_read(store, descriptor.digest), what=f"manifest {descriptor.digest}")
        if isinstance(parsed, Manifest):
            for layer in parsed.layers:
                diff_id = store.index.diff_id_of(layer.digest)
                layers.append(LayerReport(str(layer.digest), str(diff_id) if diff_id else None,
                                          layer.size, layer.media_type, reused=True))
    recorded, platform = _what_to_record(store, top, options)
    record_image(store, name, top, platform=platform if top is recorded else None, source=source)
    store.index.touch_blobs([Digest(layer.digest[7:]) for layer in layers])
    report = PullReport(name, str(recorded.digest), str(platform) if platform else None, source, layers)
    report.bytes_reused = sum(layer.size for layer in layers)
    return report
