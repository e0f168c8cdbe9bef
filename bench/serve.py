"""`layerhoard serve` against docker-registry serving the same blob, and export against skopeo.

    python -m bench serve [--size 512M] [--clients 8] [--runs 3]

1. Blob throughput: one uncompressed layer of --size is pushed into a local docker-registry and
   pulled into a cache; then --clients parallel `curl` processes GET it from each server in turn
   (loopback, same run). Target (issue 6): serve at least 0.8x docker-registry's throughput.
2. Export of the cached image into a new OCI layout against `skopeo copy oci:… oci:…` of the same
   image. Target: under 0.2 s, independent of size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from cache.images import load_image
from cache.pull import PullOptions, pull
from cache.sinks import export
from cache.store import BlobStore
from cache.units import format_size, parse_size
from tests.images import build_image, push, tar_of
from tests.services import Registry, free_port, stop_process, wait_until


def fetch_all(url: str, clients: int) -> float:
    """Seconds for ``clients`` parallel curls to each GET ``url`` completely."""
    started = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sSf", "-o", "/dev/null", url]) for _ in range(clients)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"curl {url} failed")
    return time.perf_counter() - started


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> str:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    size = parse_size(args.size)
    registry = Registry(work / "registry")
    serve = None
    store = BlobStore(work / "cache")
    try:
        image = build_image(work / "layout", [tar_of({"data.bin": os.urandom(size)})], compression="none", tag="b")
        push(image.layout, "b", registry, "bench/serve:1")  # digests preserved: the same blob in both
        pull(store, f"oci:{image.layout}:b", PullOptions(name="docker.io/bench/serve:1"))
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(work / "cache"), "-q",
                                  "serve", "--listen", f"127.0.0.1:{port}"])
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).ok, 20, "serve")
        blob = image.layers[0].digest
        urls = {"docker-registry": f"{registry.url}/v2/bench/serve/blobs/{blob}",
                "layerhoard serve": f"http://127.0.0.1:{port}/v2/bench/serve/blobs/{blob}"}
        seconds: dict[str, list[float]] = {name: [] for name in urls}
        export_times, library_times, skopeo_times = [], [], []
        for run_index in range(args.runs):
            for name, url in urls.items():
                seconds[name].append(fetch_all(url, args.clients))
            out = work / f"export-{run_index}"
            export_times.append(timed([sys.executable, "-m", "cli.main", "--cache-dir", str(work / "cache"), "-q",
                                       "export", "docker.io/bench/serve:1", f"oci:{out}:x"]))
            started = time.perf_counter()
            export(store, load_image(store, "docker.io/bench/serve:1"), f"oci:{work / f'lib-{run_index}'}:x")
            library_times.append(time.perf_counter() - started)
            skopeo_times.append(timed(["skopeo", "copy", "--quiet", f"oci:{image.layout}:b",
                                       f"oci:{work / f'skopeo-{run_index}'}:x"]))
    finally:
        store.close()
        if serve is not None:
            stop_process(serve)
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = size * args.clients
    rate = {name: total / statistics.median(values) / 1e9 for name, values in seconds.items()}
    ratio = rate["layerhoard serve"] / rate["docker-registry"]
    return "\n".join([
        f"Blob: {format_size(size)} uncompressed layer; {args.clients} parallel curl clients; median of "
        f"{args.runs} runs; {os.cpu_count()} cores; loopback.",
        "",
        "| server | aggregate GB/s |",
        "|---|---|",
        *[f"| {name} | {value:.2f} |" for name, value in rate.items()],
        "",
        f"serve / docker-registry: {ratio:.2f} (target ≥ 0.8).",
        "",
        "| export of the cached image into a new OCI layout | wall time (s) |",
        "|---|---|",
        f"| layerhoard export (CLI process, hard links) | {statistics.median(export_times):.3f} |",
        f"| export() in-process (the library call alone) | {statistics.median(library_times):.3f} |",
        f"| skopeo copy oci:… oci:… | {statistics.median(skopeo_times):.3f} |",
    ])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="blob size (default 512M)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-serve")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
