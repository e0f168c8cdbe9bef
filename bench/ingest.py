"""Ingest throughput: a generated stream into a fresh store, against the physical bound of this machine.

    python -m bench ingest [--size 1G] [--runs 3] [--chunk 1M] [--dir DIR] [--json]

An ingest hashes every byte with sha256 (the digest it is checked against) and writes it durably
(fsync before publishing), so it cannot beat the slower of the two. Measured in the same run, on the
same bytes, in the same folder:
- sha256: hashlib over the stream, nothing else;
- write: the stream written to a file in DIR with os.write, then fdatasync;
- bound = max(sha256, write); ingest = BlobStore.ingest in a new process (peak RSS from wait4),
  into a fresh store each run; ratio = bound / ingest (1.0 is as fast as the machine allows).
Each figure is the best of --runs. The stream is a 16 MiB pseudo-random block repeated: generated,
never read from disk, so the disk only ever sees the writes being measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import blake3

from bench.common import machine, markdown_table, mib, python_child, rate, run_child, timed
from cache.model.digest import Digest, parse_digest
from cache.store.blobstore import BlobStore
from cache.units import parse_size

BLOCK = 16 << 20


def stream(size: int, chunk: int) -> Iterator[memoryview]:
    """``size`` bytes in ``chunk``-sized views of one deterministic block: no copy, no disk."""
    block = memoryview(random.Random(size).randbytes(BLOCK))
    sent = 0
    while sent < size:
        start = sent % BLOCK
        piece = block[start:start + min(chunk, BLOCK - start, size - sent)]
        sent += len(piece)
        yield piece


def sha256_run(size: int, chunk: int) -> tuple[Digest, float]:
    def work() -> Digest:
        hasher = hashlib.sha256()
        for piece in stream(size, chunk):
            hasher.update(piece)
        return parse_digest(f"sha256:{hasher.hexdigest()}")

    return timed(work)


def blake3_run(size: int, chunk: int) -> float:
    def work() -> None:
        hasher = blake3.blake3()
        for piece in stream(size, chunk):
            hasher.update(piece)

    return timed(work)[1]


def write_run(folder: Path, size: int, chunk: int) -> float:
    """Write the stream to a new file in ``folder`` and fdatasync it: the disk's durable rate."""
    path = folder / "write-bound.tmp"

    def work() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for piece in stream(size, chunk):
                os.write(fd, piece)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    try:
        return timed(work)[1]
    finally:
        path.unlink(missing_ok=True)


def ingest_run(folder: Path, size: int, chunk: int, digest: Digest) -> tuple[float, int]:
    """(seconds, peak RSS) of one ingest into a fresh store, in a process of its own."""
    root = Path(tempfile.mkdtemp(prefix="store-", dir=folder))
    try:
        child = run_child(python_child("bench.ingest", "--child", str(root), "--size", str(size),
                                       "--chunk", str(chunk), "--digest", str(digest)))
        return float(child.output["seconds"]), child.peak_rss
    finally:
        shutil.rmtree(root, ignore_errors=True)


def child_main(root: Path, size: int, chunk: int, digest: Digest) -> int:
    """In the child: one timed ingest; the store is opened (and its index created) beforehand."""
    store = BlobStore(root)
    store.index.counters()  # open the metadata index outside the timed part, as a warm process has it
    chunks = cast(Iterator[bytes], stream(size, chunk))  # ingest takes memoryviews as they are
    written, seconds = timed(lambda: store.ingest(digest, chunks, size, source="bench"))
    if not written or store.size(digest) != size:
        raise SystemExit("bench: the ingest did not store the blob")
    store.close()
    print(json.dumps({"seconds": seconds}))
    return 0


def measure(folder: Path, size: int, chunk: int, runs: int) -> dict[str, Any]:
    """Best of ``runs`` rounds; each round times every job once, so load on the machine hits all alike."""
    digest, _ = sha256_run(size, chunk)
    times: dict[str, list[float]] = {"sha256": [], "blake3": [], "write": [], "ingest": []}
    peaks: list[int] = []
    for _ in range(max(1, runs)):
        times["sha256"].append(sha256_run(size, chunk)[1])
        times["blake3"].append(blake3_run(size, chunk))
        times["write"].append(write_run(folder, size, chunk))
        seconds, peak = ingest_run(folder, size, chunk, digest)
        times["ingest"].append(seconds)
        peaks.append(peak)
    best = {name: min(values) for name, values in times.items()}
    bound = max(best["sha256"], best["write"])
    return {
        "size": size, "chunk": chunk, "runs": runs, "digest": str(digest),
        "sha256_seconds": best["sha256"], "blake3_seconds": best["blake3"],
        "write_fdatasync_seconds": best["write"], "bound_seconds": bound,
        "ingest_seconds": best["ingest"], "ratio": bound / best["ingest"],
        "ingest_peak_rss": max(peaks), "all_seconds": times, "machine": machine(folder),
    }


def report(result: dict[str, Any]) -> str:
    size = result["size"]
    jobs = [("sha256 (hashlib)", "sha256_seconds"), ("blake3", "blake3_seconds"),
            ("write + fdatasync", "write_fdatasync_seconds"), ("bound = max(sha256, write)", "bound_seconds"),
            ("BlobStore.ingest", "ingest_seconds")]
    rows = [[name, f"{result[key]:.3f}", rate(size, result[key])] for name, key in jobs]
    info = result["machine"]
    return "\n".join([
        f"ingest of {mib(size)} in {mib(result['chunk'])} chunks, best of {result['runs']}",
        f"machine: {info['cpu']}, {info['nproc']} cores, {info['filesystem']}, Linux {info['kernel']}, "
        f"Python {info['python']}",
        "",
        markdown_table(["what", "seconds", "rate"], rows),
        "",
        f"ratio bound/ingest: {result['ratio']:.2f} (target >= 0.8)",
        f"ingest peak RSS: {mib(result['ingest_peak_rss'])}",
    ])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bytes to ingest, like 1G or 8M (default 1G)")
    parser.add_argument("--chunk", default="1M", help="size of the stream's chunks (default 1M)")
    parser.add_argument("--runs", type=int, default=3, help="take the best of this many runs (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a folder in /var/tmp)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--digest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size, chunk = parse_size(str(args.size)), parse_size(str(args.chunk))
    if args.child is not None:
        return child_main(args.child, size, chunk, parse_digest(args.digest))
    folder = Path(tempfile.mkdtemp(prefix="layerhoard-bench-", dir=args.dir or "/var/tmp"))
    try:
        result = measure(folder, size, chunk, args.runs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
