"""``/metrics`` of ``serve``: counters kept while serving, written in Prometheus' text format (0.0.4).

    metrics.request("manifest", "GET", 200, sent=1234)
    metrics.cache("blob", "hit")
    text = metrics.render([Family("layerhoard_open_connections", "gauge", "...", [({}, 3)])])

The format is a few lines of text per family, so it is written here rather than through
prometheus_client (a dependency, a registry of its own, and a collector API for six families).
Costs: one lock and a dict update per request. Trusts: labels are our own words (routes, methods
from a fixed list, statuses as numbers), never client text; values are still escaped as the
format asks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

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
