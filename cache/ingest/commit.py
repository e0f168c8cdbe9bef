"""The one commit path: every source ends a pull here, and so do serve's pull-through and pushes.

A source first brings every blob into the store: streamed through the
:class:`~cache.ingest.blobs.BlobPuller`, which checks each digest and records a diff_id pair only
for bytes it hashed itself, or published from a daemon's staging, which does the same. What is
left is the same for every source, and happens here in this order:

1. the manifests under the top are stored, then the top: a stored manifest's blobs are always
   stored, so a crash between two steps leaves at worst an unnamed manifest for gc;
2. a manifest with an OCI 1.1 ``subject`` is linked to it in the content graph (a referrer);
3. the top is named, under each name the source gives, once every blob it needs is stored
   (record_image checks that under index.json's lock, against a concurrent prune);
4. its blobs are marked used (for prune's least-recently-used order), and the report is built.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cache.ingest.report import LayerReport, PullReport, ReferrerReport
from cache.model.digest import parse_digest
from cache.model.manifests import Index, Manifest, Platform, subject_of
from cache.store.blobstore import BlobStore
from cache.store.graph import link_referrer
from cache.store.images import record_image


@dataclass
class Arrival:
    """What a source brought, once its blobs are stored.

    ``top`` is what the source's reference pointed at (a registry tag's index, kept whole even when
    one platform was pulled); ``manifests`` the manifests under it that this pull brought;
    ``chosen`` the one the report names (a platform's manifest), ``top`` when None.
    """

    source: str  # where it came from, as a user writes it: docker://…, oci:…, docker-daemon:…
    top: Manifest | Index
    manifests: Sequence[Manifest] = ()
    chosen: Manifest | Index | None = None
    platform: Platform | None = None  # the chosen manifest's platform
    layers: list[LayerReport] = field(default_factory=list)
    bytes_fetched: int = 0
    bytes_from_remote: int = 0
    requests: int = 0
    referrers: list[ReferrerReport] = field(default_factory=list)  # fetched with it (cache/ingest/referrers.py)


def store_manifest(store: BlobStore, manifest: Manifest | Index, source: str) -> None:
    """Store one manifest whose blobs are stored, and link it to its subject when it names one."""
    store.put_bytes(manifest.raw, manifest.media_type, source)
    subject = subject_of(manifest.raw)
    if subject is not None:  # the subject may arrive later, or never: the edge waits for it
        link_referrer(store, subject[0], manifest.digest, subject[1])


def commit(store: BlobStore, arrival: Arrival, names: Sequence[str], started: float | None = None) -> PullReport:
    """Store, link and name what ``arrival`` brought; report it under ``names[0]``. No name (a push
    by digest) stores and links only."""
    for manifest in arrival.manifests:
        if manifest.digest != arrival.top.digest:
            store_manifest(store, manifest, arrival.source)
    store_manifest(store, arrival.top, arrival.source)
    # A plain manifest's name carries its platform (from its config); an index's names none.
    named_platform = arrival.platform if isinstance(arrival.top, Manifest) else None
    for name in names:
        record_image(store, name, arrival.top, platform=named_platform, source=arrival.source)
    store.index.touch_blobs([parse_digest(layer.digest) for layer in arrival.layers if layer.reused])
    chosen = arrival.chosen or arrival.top
    report = PullReport(
        names[0] if names else str(arrival.top.digest), str(chosen.digest),
        str(arrival.platform) if arrival.platform else None, arrival.source, arrival.layers,
    )
    report.bytes_fetched = arrival.bytes_fetched
    report.bytes_from_remote = arrival.bytes_from_remote
    report.bytes_reused = sum(layer.size for layer in arrival.layers if layer.reused)
    report.requests = arrival.requests
    report.referrers = arrival.referrers
    if started is not None:
        report.seconds = round(time.monotonic() - started, 3)
    return report
