"""Cache effectiveness figures for ``layerhoard stats``, per source kind.

Counted once per pull by the pull dispatcher (cache.ingest.pull.pull), from its PullReport, so every
source is counted the same way:

  pulls          pulls that completed
  hits / misses  layers found stored / layers brought in by this pull
  bytes_fetched  bytes that came from the source (registry, daemon, layout, archive)
  bytes_reused   layer bytes that were already stored and not fetched again

``bytes saved by dedup`` is not a counter: it is what the stored images would take without
sharing layers, minus what they take (cache.upkeep.gc.usage), computed when asked.

The same figures are also counted per UTC day (``day/<YYYY-MM-DD>/<kind>/<field>``, in the same
transaction), so :func:`timeline` can show how the cache paid off over time. A day costs five
counters per source kind that pulled that day; a cache used daily for years holds a few thousand.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from cache.ingest.report import PullReport
from cache.model.refs import Source
from cache.sources import TRANSPORTS
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.upkeep.gc import Usage

KINDS = tuple(transport.kind for transport in TRANSPORTS)  # one row per registered source
FIELDS = ("pulls", "hits", "misses", "bytes_fetched", "bytes_reused")


def record_pull(store: BlobStore, source: Source, report: PullReport) -> None:
    """Add one pull's figures to the counters. A counter that cannot be written never fails the pull."""
    kind = source.kind
    hits = sum(1 for layer in report.layers if layer.reused)
    amounts = {
        f"{kind}/pulls": 1,
        f"{kind}/hits": hits,
        f"{kind}/misses": len(report.layers) - hits,
        f"{kind}/bytes_fetched": report.bytes_fetched,
        f"{kind}/bytes_reused": report.bytes_reused,
    }
    day = time.strftime("%Y-%m-%d", time.gmtime())
    amounts.update({f"{DAY}{day}/{name}": amount for name, amount in list(amounts.items())})
    with contextlib.suppress(sqlite3.Error):
        store.index.count_many(amounts)


DAY = "day/"  # the counters' prefix per UTC day


def source_counters(store: BlobStore) -> dict[str, dict[str, int]]:
    """The counters of each source kind since the cache began (every kind, zeros included)."""
    counters = store.index.counters()
    return {kind: {name: int(counters.get(f"{kind}/{name}", 0)) for name in FIELDS} for kind in KINDS}


def stats(store: BlobStore, used: Usage | None = None) -> dict[str, Any]:
    """Counters per source kind, their totals, and the bytes that layer sharing saves right now
    (``used``: the store's usage when the caller has it already, as the view does)."""
    from cache.upkeep.gc import usage  # lifecycle imports images: keep the pull path's imports small

    per_kind = source_counters(store)
    totals = {name: sum(values[name] for values in per_kind.values()) for name in FIELDS}
    used = usage(store) if used is None else used
    return {
        "sources": per_kind,
        "total": totals,
        "dedup_saved_bytes": used.dedup_saved,
        "stored_bytes": used.bytes,
        "image_bytes": used.image_bytes,
    }


def timeline(store: BlobStore) -> list[dict[str, Any]]:
    """The counters per UTC day, oldest first: ``{"day": "2026-11-30", <field>: total of the day,
    "sources": {kind: {<field>: n}}}``; days without a pull are absent."""
    days: dict[str, dict[str, Any]] = {}
    for name, amount in store.index.counters(DAY).items():
        parts = name[len(DAY):].split("/")
        if len(parts) != 3 or parts[1] not in KINDS or parts[2] not in FIELDS:
            continue  # not ours (a newer version's field): left out rather than guessed at
        day, kind, field = parts
        entry = days.setdefault(day, {"day": day, **dict.fromkeys(FIELDS, 0), "sources": {}})
        entry[field] += amount
        entry["sources"].setdefault(kind, dict.fromkeys(FIELDS, 0))[field] += amount
    return [days[day] for day in sorted(days)]
