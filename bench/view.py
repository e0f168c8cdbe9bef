"""The web view at 2,000 images (issue 21): the page rendered (target under 0.5 s), with and without
the prune preview, and fetched through ``serve``; beside it what a user would otherwise run to learn
the same, ``ls``, ``du`` and ``stats`` (one process each, start-up included).

The cache is made directly on disk as bench/scale.py makes it (small blobs, their metadata records,
index.json; neighbouring images share half their layers), plus a day of pull counters per source
kind and a pin every 50 images, so every part of the page has something to draw. The view reads
manifests, sizes and records, never a layer's bytes, so small blobs measure what it costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from bench.common import REPO_ROOT, best_of, machine, markdown_table
from bench.scale import cache_parser, synthetic_cache
from cache.server import ServeOptions, make_server
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.view.routes import answer


def _fill_counters(store: BlobStore, images: int) -> None:
    """What ``images`` pulls would have counted, spread over a week of days and the four kinds."""
    amounts: dict[str, int] = {}
    for n in range(images):
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400 * (n % 7)))
        kind = ("registry", "daemon", "oci", "archive")[n % 4]
        for name, amount in (("pulls", 1), ("hits", 4), ("misses", 4), ("bytes_fetched", 400), ("bytes_reused", 400)):
            for key in (f"{kind}/{name}", f"day/{day}/{kind}/{name}"):
                amounts[key] = amounts.get(key, 0) + amount
    store.index.count_many(amounts)


def _render(store: BlobStore, query: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one render of the page (CPU: this thread's own, which other
    processes on a loaded machine do not inflate)."""
    started, cpu = time.perf_counter(), time.thread_time()
    response = answer(store, "/", query)
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    assert response.status == 200, response.body[:200]
    return seconds, cpu


def _best_render(store: BlobStore, query: dict[str, str], runs: int) -> tuple[float, float]:
    timings = [_render(store, query) for _ in range(max(1, runs))]
    return min(wall for wall, _ in timings), min(cpu for _, cpu in timings)


def _cli_seconds(cache: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "--json", *args],
                   check=True, capture_output=True, cwd=REPO_ROOT)
    return time.perf_counter() - started


def _served_seconds(store: BlobStore, runs: int) -> tuple[float, int]:
    """The best time of a GET / through serve, and the page's size in bytes."""
    server = make_server(store, ServeOptions(listen="127.0.0.1:0", access_log=None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sizes: list[int] = []

    def fetch() -> float:
        started = time.perf_counter()
        response = requests.get(f"{server.url}/", timeout=60)
        response.raise_for_status()
        sizes.append(len(response.content))
        return time.perf_counter() - started

    try:
        return best_of(runs, fetch), sizes[-1]
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str]) -> int:
    parser = cache_parser("view", __doc__, images=2000, blobs=20_000)
    parser.add_argument("--runs", type=int, default=5, help="renders timed; the best is reported")
    args = parser.parse_args(argv)
    with synthetic_cache(args, "cache") as (root, store, built):
        _fill_counters(store, args.images)
        for n in range(0, args.images, 50):
            pins.pin(store, f"example.com/team/app{n}:1")
        load = f"{os.getloadavg()[0]:.1f}"
        first = _render(store, {})
        page = _best_render(store, {}, args.runs)
        preview = _best_render(store, {"max_size": "1M"}, args.runs)
        served, size = _served_seconds(store, args.runs)
        commands = {name: best_of(args.runs, lambda name=name: _cli_seconds(store.root, name))  # type: ignore[misc]
                    for name in ("ls", "du", "stats")}
        together = sum(commands.values())
        print(json.dumps(machine(root), indent=2))
        print(f"cache: {args.images} images, {args.blobs} blobs, {args.layers} layers per image "
              f"(built in {built:.0f} s); page {size / 1e6:.1f} MB of HTML\n")
        rows = [
            ["render / (first in this process)", f"{first[0]:.3f}", f"{first[1]:.3f}", f"{first[0] / together:.2f}"],
            ["render / (best of runs)", f"{page[0]:.3f}", f"{page[1]:.3f}", f"{page[0] / together:.2f}"],
            ["render /?max_size=1M (with the prune preview)", f"{preview[0]:.3f}", f"{preview[1]:.3f}",
             f"{preview[0] / together:.2f}"],
            ["GET / through serve", f"{served:.3f}", "", f"{served / together:.2f}"],
            *([f"layerhoard --json {name} (one process)", f"{seconds:.3f}", "", f"{seconds / together:.2f}"]
              for name, seconds in commands.items()),
            ["ls + du + stats, what the page replaces", f"{together:.3f}", "", "1.00"],
        ]
        print(f"load average before: {load}, after: {os.getloadavg()[0]:.1f}\n")
        print(markdown_table(["what (target: render under 0.5 s)", "wall s", "CPU s", "wall ratio to ls+du+stats"],
                             rows))
    return 0
