"""Pulls that go through the team's remote tier (cache/remote/tier.py) before the origin or the daemon.

Registry images: the manifest is resolved through the remote (by digest, or by the name's tag),
every blob is asked of the remote first; see cache/sources/registry.py. Bytes from the remote that
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
from cache.ingest.report import PullReport
from cache.model.digest import parse_digest
from cache.model.manifests import Manifest, Platform, parse_manifest_or_index
from cache.model.refs import DaemonSource, ImageRef, daemon_image_name
from cache.progress import ProgressFactory, no_progress
from cache.remote.address import platform_key
from cache.remote.tier import RemoteTier
from cache.sources.registry import RegistryPullOptions, pull_from_registry
from cache.store.blobstore import BlobStore
from cache.store.images import record_image

_BAD_BYTES = (DigestMismatch, SizeMismatch, CorruptLayer)


def pull_registry_via_remote(store: BlobStore, ref: ImageRef, options: RegistryPullOptions) -> PullReport:
    remote = options.remote
    assert remote is not None
    served = remote.blobs_served
    try:
        return pull_from_registry(store, ref, options)
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
    store.put_bytes(manifest.raw, manifest.media_type, source)
    platform = pulled.config.platform
    local = daemon_image_name(name)  # the remote's tag follows the plain name; index.json keeps them apart
    record_image(store, local, manifest, platform=platform, source=source)
    report = PullReport(local, str(manifest.digest), str(platform) if platform else None, source, pulled.layers)
    report.bytes_from_remote = report.bytes_fetched = remote.bytes_served - served
    report.bytes_reused = sum(layer.size for layer in pulled.layers if layer.reused)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _info_platform(info: dict[str, object]) -> Platform:
    def text(key: str) -> str:
        value = info.get(key)
        return value if isinstance(value, str) else ""

    return Platform(text("Os") or "linux", text("Architecture"), text("Variant") or None)
