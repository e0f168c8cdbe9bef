"""Pulls that go through the team's remote tier (cache/remote/tier.py) before the origin or the daemon.

Registry images: the manifest is resolved through the remote (by digest, or by the name's tag),
every blob is asked of the remote first (:class:`RemoteFirst` wraps the registry's origin). Bytes from the remote that
fail a check make the pull run once more with the remote switched off, so a damaged remote costs
time but never the job.

Daemon images (``docker-daemon:NAME``): the local daemon, when it has the image, stays the
authority on what NAME means on this machine:
- stored here already: the ordinary daemon pull (no remote request);
- not stored, and the remote's tag for NAME holds a manifest whose config is this very image
  (the config digest is the image ID): its blobs come from the remote, with no `docker save`;
- otherwise `docker save`, then the image is pushed for teammates.
When the daemon is down, or does not have NAME (a teammate's image), NAME is resolved through the
remote's tag for it and the host's platform: no daemon involved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cache.errors import (
    BlobNotFound,
    DigestMismatch,
    ImageNotFound,
    InvalidDigest,
    InvalidReference,
    SizeMismatch,
    SourceError,
)
from cache.formats.compression import CorruptLayer
from cache.ingest.blobs import BlobPuller
from cache.ingest.commit import Arrival, commit
from cache.ingest.referrers import RegistryReferrers
from cache.ingest.report import PullReport
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import Index, Manifest, Platform, parse_manifest_or_index
from cache.model.refs import DaemonSource, ImageRef, RegistrySource, Source, daemon_image_name
from cache.progress import ProgressFactory, no_progress
from cache.remote.address import platform_key
from cache.remote.tier import RemoteTier
from cache.sources.registry import Origin, RegistryPullOptions, pull_from_registry, registry_options
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions

_BAD_BYTES = (DigestMismatch, SizeMismatch, CorruptLayer)


class RemoteFirst:
    """A registry pull's origin with the remote tier in front: manifests and blobs are asked of the
    remote first, the registry on a miss; after the pull, the remote is filled with what it lacked."""

    def __init__(self, remote: RemoteTier, ref: ImageRef, origin: Origin) -> None:
        self.remote = remote
        self.ref = ref
        self.origin = origin
        self.fetch = remote.fetch_first(origin.fetch)
        self._served_before = remote.bytes_served
        self._top_from_remote = False

    def top_manifest(self, platform: Platform | None, all_platforms: bool) -> tuple[bytes, str | None]:
        found = self.remote.resolve_ref(self.ref, platform, all_platforms)
        self._top_from_remote = found is not None
        return found or self.origin.top_manifest(platform, all_platforms)

    def manifest(self, digest: Digest) -> bytes:
        found = self.remote.manifest_by_digest(digest)
        return found[0] if found is not None else self.origin.manifest(digest)

    def costs(self) -> tuple[int, int, int]:
        fetched, _, requests = self.origin.costs()
        from_remote = self.remote.bytes_served - self._served_before
        return fetched + from_remote, from_remote, requests

    def pulled(self, store: BlobStore, recorded: Manifest | Index, name: str) -> None:
        if not self._top_from_remote or self.origin.costs()[0]:  # the remote lacked something: fill it
            self.remote.push_later(store, recorded, "docker", name, self.ref)

    def referrers(self) -> RegistryReferrers:
        """The remote's, when it served the whole image (it was filled with them); else the origin's."""
        if self._top_from_remote and not self.origin.costs()[0] and self.remote.readable:
            return RegistryReferrers(self.remote.client, self.remote.spec.repository, from_remote=True)
        return self.origin.referrers()


def pull_through_remote(
    store: BlobStore,
    source: Source,
    remote: RemoteTier,
    options: PullOptions,
    pull: Callable[[BlobStore, Source, PullOptions], PullReport],
) -> PullReport:
    """Pull ``source`` with the remote tier in front of it: registry and daemon images go through
    the remote; other sources (a layout, a tarball on disk) have nothing to gain from it."""
    if isinstance(source, RegistrySource):
        return _registry_via_remote(store, source.ref, remote, registry_options(options))
    if isinstance(source, DaemonSource):
        return pull_daemon_via_remote(store, source, remote, docker_host=options.docker_host,
                                      platform=options.platform, jobs=options.jobs, progress=options.progress)
    return pull(store, source, options)


def _registry_via_remote(
    store: BlobStore, ref: ImageRef, remote: RemoteTier, options: RegistryPullOptions
) -> PullReport:
    served = remote.blobs_served
    through = options._replace(through=lambda origin: RemoteFirst(remote, ref, origin))
    try:
        return pull_from_registry(store, ref, through)
    except _BAD_BYTES as error:
        if remote.blobs_served == served and remote.readable:
            raise  # nothing came from the remote: the origin's bytes are bad
        remote.fail(error)
        return pull_from_registry(store, ref, options)  # the remote is off now: origin only


def pull_daemon_via_remote(
    store: BlobStore,
    source: DaemonSource,
    remote: RemoteTier,
    *,
    docker_host: str | None = None,
    platform: Platform | None = None,
    jobs: int = 4,
    progress: ProgressFactory = no_progress,
) -> PullReport:
    from cache.sources.daemon import pull_from_daemon, record_name
    from cache.sources.engine import connect

    started = time.monotonic()
    info = None
    try:
        engine = connect(docker_host)
        try:
            info = engine.inspect(source.name)
        finally:
            engine.close()
    except (SourceError, ImageNotFound) as error:
        unavailable: Exception = error
    if info is None:
        return _from_remote_only(store, source, remote, platform, jobs, progress, started, unavailable)
    name = record_name(source.name, info)
    asked_remote = False
    try:
        image_id = parse_digest(str(info.get("Id")))
    except InvalidDigest:
        image_id = None
    if image_id is not None and not store.has(image_id):
        asked_remote = True
        found = remote.resolve("daemon", name, platform_key(_info_platform(info)))
        if isinstance(found, Manifest) and found.config.digest == image_id:  # the very same image
            report = _pull_manifest(store, remote, found, name, str(source), jobs, progress, started)
            if report is not None:
                return report
    report = pull_from_daemon(store, source, docker_host=docker_host, progress=progress)
    if asked_remote or any(not layer.reused for layer in report.layers):
        top = parse_manifest_or_index(store.read_bytes(parse_digest(report.digest)), what=f"manifest of {name}")
        remote.push_later(store, top, "daemon", name)  # the remote tags the plain name
    return report


def _from_remote_only(
    store: BlobStore,
    source: DaemonSource,
    remote: RemoteTier,
    platform: Platform | None,
    jobs: int,
    progress: ProgressFactory,
    started: float,
    unavailable: Exception,
) -> PullReport:
    """No daemon, or no such image in it: the remote's tag for the name, else the daemon's error."""
    try:
        name = str(ImageRef.parse(source.name))
    except InvalidReference:
        raise unavailable from None  # an image ID names nothing in the remote
    found = remote.resolve("daemon", name, platform_key(platform or Platform.host()))
    report = None
    if isinstance(found, Manifest):
        report = _pull_manifest(store, remote, found, name, str(source), jobs, progress, started)
    if report is None:
        raise type(unavailable)(f"{unavailable} (and the remote {remote.spec.name} has no {name})") from None
    return report


def _pull_manifest(
    store: BlobStore,
    remote: RemoteTier,
    manifest: Manifest,
    name: str,
    source: str,
    jobs: int,
    progress: ProgressFactory,
    started: float,
) -> PullReport | None:
    """Every blob of ``manifest`` from the remote (checked as any pull), recorded as ``name``;
    None when the remote lacks a blob or serves a bad one (the caller falls back)."""
    served = remote.bytes_served
    puller = BlobPuller(store, remote.fetch_first(None), source, jobs=jobs, progress=progress)
    try:
        pulled = puller.pull_manifest(manifest)
    except BlobNotFound:
        return None
    except _BAD_BYTES as error:
        remote.fail(error)
        return None
    local = daemon_image_name(name)  # the remote's tag follows the plain name; index.json keeps them apart
    fetched = remote.bytes_served - served
    arrival = Arrival(source, manifest, platform=pulled.config.platform, layers=pulled.layers,
                      bytes_fetched=fetched, bytes_from_remote=fetched)
    return commit(store, arrival, [local], started)


def _info_platform(info: dict[str, object]) -> Platform:
    def text(key: str) -> str:
        value = info.get(key)
        return value if isinstance(value, str) else ""

    return Platform(text("Os") or "linux", text("Architecture"), text("Variant") or None)
