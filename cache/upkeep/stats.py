"""Cache effectiveness figures for ``layerhoard stats``, per source kind.

Counted once per pull by the pull dispatcher (cache.ingest.pull.pull), from its PullReport, so every
source is counted the same way:

  pulls          pulls that completed
  hits / misses  layers found stored / layers brought in by this pull
  bytes_fetched  bytes that came from the source (registry, daemon, layout, archive)
  bytes_reused   layer bytes that were already stored and not fetched again

``bytes saved by dedup`` is not a counter: it is what the stored images would take without
sharing layers, minus what they take (cache.upkeep.gc.usage), computed when asked.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from cache.ingest.report import PullReport
from cache.model.refs import ArchiveSource, DaemonSource, LayoutSource, RegistrySource, Source
from cache.store.blobstore import BlobStore

KINDS = ("registry", "daemon", "oci", "archive")
FIELDS = ("pulls", "hits", "misses", "bytes_fetched", "bytes_reused")


def source_kind(source: Source) -> str:
    if isinstance(source, RegistrySource):
        return "registry"
    if isinstance(source, DaemonSource):
        return "daemon"
    if isinstance(source, LayoutSource):
        return "oci"
    if isinstance(source, ArchiveSource):
        return "archive"
    return "other"


def record_pull(store: BlobStore, source: Source, report: PullReport) -> None:
    """Add one pull's figures to the counters. A counter that cannot be written never fails the pull."""
    kind = source_kind(source)
    hits = sum(1 for layer in report.layers if layer.reused)
    amounts = {
        f"{kind}/pulls": 1,
        f"{kind}/hits": hits,
        f"{kind}/misses": len(report.layers) - hits,
        f"{kind}/bytes_fetched": report.bytes_fetched,
        f"{kind}/bytes_reused": report.bytes_reused,
    }
    with contextlib.suppress(sqlite3.Error):
        store.index.count_many(amounts)


def stats(store: BlobStore) -> dict[str, Any]:
    """Counters per source kind, their totals, and the bytes that layer sharing saves right now."""
    from cache.upkeep.gc import usage  # lifecycle imports images: keep the pull path's imports small

    counters = store.index.counters()
    per_kind = {kind: {name: int(counters.get(f"{kind}/{name}", 0)) for name in FIELDS} for kind in KINDS}
    totals = {name: sum(values[name] for values in per_kind.values()) for name in FIELDS}
    used = usage(store)
    return {
        "sources": per_kind,
        "total": totals,
        "dedup_saved_bytes": used.dedup_saved,
        "stored_bytes": used.bytes,
        "image_bytes": used.image_bytes,
    }
