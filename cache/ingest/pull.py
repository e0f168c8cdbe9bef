"""One entry point for every source: ``pull(store, source)`` brings an image into the store.

    from cache import BlobStore
    from cache.ingest.pull import pull, PullOptions
    report = pull(BlobStore("~/.cache/layerhoard"), "alpine:3.20")
    image = load_image(store, report.ref)       # manifest, config, layers as streams
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from cache.errors import ImageNotFound
from cache.ingest.report import PullReport
from cache.model.digest import Digest
from cache.model.manifests import Index, Manifest, Platform
from cache.model.refs import RegistrySource, Source, parse_source
from cache.progress import ProgressFactory, no_progress
from cache.sources import DEFAULT_JOBS, source_module
from cache.store.blobstore import BlobStore, DiskFull, disk_full
from cache.store.images import BlobsEvicted, CachedImage, load_image
from cache.upkeep.stats import record_pull

if TYPE_CHECKING:
    from cache.registry.http import SpeedFloor
    from cache.remote.tier import RemoteTier


class ReferrerOptions(NamedTuple):
    """What travels with an image (cache/ingest/referrers.py). ``enabled`` False: none fetched
    (``--no-referrers``); ``types``: only these artifactTypes (``--referrers-type``); ``refresh``:
    ask about manifests that were stored already (``--refresh-referrers``: how a new signature on an
    old image is picked up). Kept here, not with the fetching, so a cached pull never loads that."""

    enabled: bool = True
    types: tuple[str, ...] = ()
    refresh: bool = False

    def subjects(self, store: BlobStore, manifests: Iterable[Manifest | Index]) -> list[Digest]:
        """The manifests whose referrers a pull asks for: those it is about to store (so a cached
        pull costs no request more), or every one with ``refresh``. Call it before they are stored."""
        if not self.enabled:
            return []
        return list(dict.fromkeys(m.digest for m in manifests if self.refresh or not store.has(m.digest)))


class PullOptions(NamedTuple):
    platform: Platform | None = None
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    insecure: bool = False
    offline: bool = False
    docker_host: str | None = None
    name: str | None = None  # the name to record an oci: or docker-archive: image under
    progress: ProgressFactory = no_progress
    remote: RemoteTier | None = None  # the team's remote tier, asked before the origin (cache/remote/tier.py)
    floor: SpeedFloor | None = None  # a registry's speed floor; None: LAYERHOARD_MIN_SPEED[_TIME], else the default
    referrers: ReferrerOptions | None = None  # signatures, SBOMs... of a registry or oci: image (None: fetched)
    containerd_address: str | None = None  # containerd: names (else CONTAINERD_ADDRESS, else its default socket)
    containerd_root: str | None = None  # containerd's content store, for containerd: and Docker's containerd store


def pull(store: BlobStore, source: Source | str, options: PullOptions | None = None) -> PullReport:
    """Bring the image named by ``source`` into ``store``; report what was fetched and reused.

    A pull whose stored blobs were evicted by a concurrent prune between "is it stored?" and
    recording the image runs once more (fetching them again); the hit/miss counters of ``stats``
    are recorded here, once per pull, for every source.
    """
    options = options or PullOptions()
    if isinstance(source, str):
        source = parse_source(source)
    try:
        try:
            report = _pull(store, source, options)
        except BlobsEvicted:
            report = _pull(store, source, options)
    except (OSError, sqlite3.OperationalError) as error:
        if not disk_full(error):
            raise
        raise DiskFull(store.root) from None
    record_pull(store, source, report)
    return report


def cached_or_pulled(
    store: BlobStore, text: str, platform: Platform | None = None, remote: RemoteTier | None = None
) -> CachedImage:
    """The cached image ``text`` names (a registry reference, or any source), pulled through the
    cache when it is missing: a registry name that is stored (with ``platform`` stored, when one is
    asked) costs no request; any other source is pulled, which reuses what is stored."""
    if store.image_descriptor(text) is not None:  # a name as `ls` lists it (push:…, docker-daemon:…)
        return load_image(store, text, platform)
    source = parse_source(text)
    if isinstance(source, RegistrySource):
        try:
            return load_image(store, str(source.ref), platform)
        except ImageNotFound:
            pass
    report = pull(store, source, PullOptions(platform=platform, remote=remote))
    return load_image(store, report.ref, platform)


def _pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    # Each source's module is imported when used: `sbom` or `export` of a cached image then never
    # loads the HTTP client, and `pull oci:` never loads docker-py.
    module = importlib.import_module(source_module(source.kind))
    if options.remote is not None and not options.offline:
        from cache.remote.source import pull_through_remote  # the remote tier wraps the source

        return pull_through_remote(store, source, options.remote, options, module.pull)
    report: PullReport = module.pull(store, source, options)
    return report

