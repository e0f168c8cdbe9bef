"""``/metrics`` of ``serve``: counters kept while serving, written in Prometheus' text format (0.0.4).

    metrics.request("manifest", "GET", 200, sent=1234)
    metrics.cache("blob", "hit")
    text = metrics.render([Family("layerhoard_open_connections", "gauge", "...", [({}, 3)])])

The format is a few lines of text per family, so it is written here rather than through
prometheus_client (a dependency, a registry of its own, and a collector API for six families).
Costs: one lock and a dict update per request. Trusts: labels are our own words (routes, methods
from a fixed list, statuses as numbers), never client text; values are still escaped as the
format asks.

:class:`StoreGauges` adds what the cache holds and what it saved (the figures of ``du`` and
``stats``): read from the metadata index (one query for the blobs, one for the counters) and
index.json, never from a listing of blobs/, and kept for a few seconds so that frequent scrapes
of a large cache cost nothing more.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from cache.store.blobstore import BlobStore
from cache.upkeep.stats import source_counters

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]]


class Metrics:
    """What one server process counted since it started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()  # (route, method, status)
        self._cache: Counter[tuple[str, str]] = Counter()  # (kind, result)
        self._upstream: Counter[str] = Counter()  # kind of fetch
        self.bytes_sent = 0

    def request(self, route: str, method: str, status: int, sent: int) -> None:
        method = method if method in METHODS else "other"  # a client's method is client text
        with self._lock:
            self._requests[route, method, str(status)] += 1
            self.bytes_sent += sent

    def cache(self, kind: str, result: str) -> None:
        """``kind`` blob or manifest; ``result`` hit (from the store), upstream (fetched) or miss (404)."""
        with self._lock:
            self._cache[kind, result] += 1

    def upstream_fetch(self, kind: str) -> None:
        with self._lock:
            self._upstream[kind] += 1

    def render(self, more: Iterable[Family] = ()) -> str:
        with self._lock:
            families = [
                Family("layerhoard_http_requests_total", "counter", "Requests answered, by route, method and status.",
                       [({"route": r, "method": m, "status": s}, n)
                        for (r, m, s), n in sorted(self._requests.items())]),
                Family("layerhoard_http_response_bytes_total", "counter", "Response body bytes sent.",
                       [({}, self.bytes_sent)]),
                Family("layerhoard_cache_requests_total", "counter",
                       "Blob and manifest requests: hit (from the store), upstream (fetched), miss (not found).",
                       [({"kind": k, "result": r}, n) for (k, r), n in sorted(self._cache.items())]),
                Family("layerhoard_upstream_fetches_total", "counter", "Fetches from upstream registries, by kind.",
                       [({"kind": k}, n) for k, n in sorted(self._upstream.items())]),
            ]
        return "".join(_family(family) for family in [*families, *more])


# name, help, and the stats field (cache.upkeep.stats.FIELDS) counted per source kind
SOURCE_COUNTERS = (
    ("layerhoard_pulls_total", "Pulls completed into the cache, by source kind.", "pulls"),
    ("layerhoard_layer_hits_total", "Layers a pull found stored (not fetched), by source kind.", "hits"),
    ("layerhoard_layer_misses_total", "Layers a pull had to fetch, by source kind.", "misses"),
    ("layerhoard_fetched_bytes_total", "Bytes pulls fetched from their source, by source kind.", "bytes_fetched"),
    ("layerhoard_reused_bytes_total", "Layer bytes pulls found stored and did not fetch again, by source kind.",
     "bytes_reused"),
)


class StoreGauges:
    """The cache's size and its pull counters as metric families, kept for ``seconds``."""

    def __init__(self, store: BlobStore, seconds: float = 5.0) -> None:
        self._store = store
        self._seconds = seconds
        self._lock = threading.Lock()
        self._families: list[Family] = []
        self._until = 0.0

    def families(self) -> list[Family]:
        with self._lock:
            now = time.monotonic()
            if now >= self._until:
                self._families, self._until = self._read(), now + self._seconds
            return self._families

    def _read(self) -> list[Family]:
        blobs, stored = self._store.index.blob_totals()
        images = len(self._store.images())
        per_kind = source_counters(self._store)
        return [
            Family("layerhoard_cache_bytes", "gauge", "Bytes of the blobs the cache holds.", [({}, stored)]),
            Family("layerhoard_cache_blobs", "gauge", "Blobs the cache holds.", [({}, blobs)]),
            Family("layerhoard_cache_images", "gauge", "Images named in the cache (its index.json).", [({}, images)]),
            *(Family(name, "counter", text, [({"source": kind}, values[field]) for kind, values in per_kind.items()])
              for name, text, field in SOURCE_COUNTERS),
        ]


def _family(family: Family) -> str:
    lines = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
    for labels, value in family.samples:
        shown = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
        lines.append(f"{family.name}{{{shown}}} {_number(value)}" if shown else f"{family.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
