"""`layerhoard serve` against docker-registry serving the same image, and export against skopeo.

    python -m bench serve [--size 512M] [--clients 8] [--runs 3] [--duration 10]

1. Blob throughput: one uncompressed layer of --size is pushed into a local docker-registry and
   pulled into a cache; then --clients parallel `curl` processes GET it from each server in turn
   (loopback, same run). Target (issue 6): serve at least 0.8x docker-registry's throughput.
2. Under load (issue 16): manifest GETs with wrk at 32 and at 256 connections against each server
   (requests/s, p99 latency, errors); then a slowloris run: 300 connections each holding half a
   request head while one normal manifest GET is timed (median of 5). Targets: requests/s at least
   the registry's, p99 no worse, no errors; the normal request under 1 s.
3. Export of the cached image into a new OCI layout against `skopeo copy oci:… oci:…` of the same
   image. Target: under 0.2 s, independent of size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from cache.ingest.pull import PullOptions, pull
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
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


MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    """requests/s, p99 latency (s) and errors (socket errors and non-2xx) of one wrk run."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
                          "-H", f"Accept: {MANIFEST_TYPES}", url], check=True, capture_output=True, text=True).stdout
    p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s|m)\s*$", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    if p99 is None or rate is None:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", out))
    errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: ([0-9]+)", out))
    return {"rate": float(rate.group(1)), "p99": float(p99.group(1)) * _UNIT[p99.group(2)], "errors": errors}


def slowloris(url: str, idle: int = 300, probes: int = 5) -> float:
    """Median seconds of a normal GET of ``url`` while ``idle`` connections each hold half a request."""
    host, _, port = url.split("/")[2].rpartition(":")
    held = []
    try:
        for _ in range(idle):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            held.append(sock)
        times = []
        for _ in range(probes):
            started = time.perf_counter()
            requests.get(url, headers={"Accept": MANIFEST_TYPES}, timeout=30).raise_for_status()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        for sock in held:
            sock.close()


def under_load(urls: dict[str, str], seconds: int) -> list[str]:
    """The wrk and slowloris rows (markdown), with ratios serve / registry."""
    rows = ["| connections | server | requests/s | p99 latency (ms) | errors |", "|---|---|---|---|---|"]
    ratios = []
    for connections in (32, 256):
        result = {name: wrk(url, connections, seconds) for name, url in urls.items()}
        for name, figures in result.items():
            rows.append(f"| {connections} | {name} | {figures['rate']:.0f} | {figures['p99'] * 1000:.1f} | "
                        f"{figures['errors']:.0f} |")
        ours, theirs = result["layerhoard serve"], result["docker-registry"]
        ratios.append(f"{connections} connections: requests/s {ours['rate'] / theirs['rate']:.2f}x, "
                      f"p99 {ours['p99'] / theirs['p99']:.2f}x the registry's")
    rows += ["", *ratios, "", "| slowloris: 300 half-sent requests held open | normal manifest GET (ms, median of 5) |",
             "|---|---|"]
    rows += [f"| {name} | {slowloris(url) * 1000:.1f} |" for name, url in urls.items()]
    return rows


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> str:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    serve_log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below; the access log, as the registry keeps one
    size = parse_size(args.size)
    registry = Registry(work / "registry")
    serve = None
    store = BlobStore(work / "cache")
    try:
        image = build_image(work / "layout", [tar_of({"data.bin": os.urandom(size)})], compression="none", tag="b")
        push(image.layout, "b", registry, "bench/serve:1")  # digests preserved: the same blob in both
        pull(store, f"oci:{image.layout}:b", PullOptions(name="docker.io/bench/serve:1"))
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(work / "cache"),
                                  "serve", "--listen", f"127.0.0.1:{port}"], stderr=serve_log)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).ok, 20, "serve")
        blob = image.layers[0].digest
        urls = {"docker-registry": f"{registry.url}/v2/bench/serve/blobs/{blob}",
                "layerhoard serve": f"http://127.0.0.1:{port}/v2/bench/serve/blobs/{blob}"}
        manifests = {"docker-registry": f"{registry.url}/v2/bench/serve/manifests/1",
                     "layerhoard serve": f"http://127.0.0.1:{port}/v2/bench/serve/manifests/1"}
        load_rows = under_load(manifests, args.duration)
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
        serve_log.close()
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
        f"serve / docker-registry: {ratio:.2f} (target ≥ 1.0).",
        "",
        f"Manifest GETs: wrk -t2 --latency for {args.duration} s per row, one after the other; serve logs "
        "every request to a file, as the registry does.",
        "",
        *load_rows,
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
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-serve")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
