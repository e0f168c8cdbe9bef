"""The remote tier: a second machine's pull from the remote against a pull from the origin, same run.

    python -m bench remote [--size 512M] [--layers 4] [--runs 3]

Two docker-registry processes on this machine, the origin and the remote; each run uses a new
remote repository and new cache folders (the machines). Jobs, each the median of --runs runs:
  origin      empty cache, no remote: the pull every machine does without the tier
  fill        empty cache, empty remote: the first machine's cold pull plus its push (the command
              waits for the background push before it exits)
  remote      empty cache, filled remote: the second machine; the origin's access log must show
              no request at all
  cached      a cached pull with the remote configured (one manifest request, to the remote)
  down        empty cache, remote on a closed port: the fallback to the origin
Both registries are local, so this measures the tier's overhead, not the network it saves: on a
team the origin is across the internet (or rate-limited) and the remote next to the runners.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import machine, markdown_table, run_child
from bench.pull import LAYERHOARD
from bench.pull_images import build_layout
from cache.units import format_size, parse_size
from tests.services import Registry, free_port, skopeo


def pull(cache: Path, ref: str, *extra: str) -> tuple[dict[str, object], float]:
    """One pull's report and wall time; then (untimed) the wait for the diff_id check it left running,
    so that check neither competes with the next job nor writes into a cache being removed. The
    disk is synced first, so no job pays for the previous one's writes."""
    os.sync()
    started = time.perf_counter()
    child = run_child([*LAYERHOARD, "--cache-dir", str(cache), "--json", "pull", ref, *extra])
    seconds = time.perf_counter() - started
    subprocess.run([*LAYERHOARD, "--cache-dir", str(cache), "-q", "verify", "--diff-ids"], check=True)
    return child.output, seconds


def run(args: argparse.Namespace) -> str:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "origin").mkdir(parents=True)
    (work / "remote").mkdir()
    origin, remote = Registry(work / "origin"), Registry(work / "remote")
    times: dict[str, list[float]] = {job: [] for job in ("origin", "fill", "remote", "cached", "down")}
    origin_requests: list[int] = []
    try:
        compressed = format_size(build_layout(work / "layout", "synthetic", parse_size(args.size), args.layers)[1])
        ref = f"{origin.host}/bench/remote:1"
        skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{work / 'layout'}:bench", f"docker://{ref}")
        for run_number in range(args.runs):
            caches = work / f"caches{run_number}"
            shared = f"{remote.host}/cache{uuid.uuid4().hex[:8]}"
            times["origin"].append(pull(caches / "plain", ref)[1])
            # before the remote is filled: the remote registry still finishing the last run's
            # uploads made this job 0.6 s slower when it came last
            times["down"].append(pull(caches / "c", ref, "--remote", f"127.0.0.1:{free_port()}/cache")[1])
            times["fill"].append(pull(caches / "a", ref, "--remote", shared)[1])
            mark = origin.mark()
            report, seconds = pull(caches / "b", ref, "--remote", shared)
            times["remote"].append(seconds)
            origin_requests.append(len(origin.requests(mark)))
            assert report["bytes_from_remote"] == report["bytes_fetched"], report
            times["cached"].append(pull(caches / "b", ref, "--remote", shared)[1])
            shutil.rmtree(caches)
    finally:
        origin.stop()
        remote.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    median = {job: statistics.median(values) for job, values in times.items()}
    base = median["origin"]
    labels = {
        "origin": "pull from the origin, empty cache (no remote)",
        "fill": "first machine: pull from the origin + push to the remote",
        "remote": "second machine: pull from the remote, empty cache",
        "cached": "cached pull, remote configured",
        "down": "pull with the remote down (closed port), empty cache",
    }
    rows = [(labels[job], f"{median[job]:.2f}", f"{median[job] / base:.2f}") for job in labels]
    info = machine(work.parent)
    return "\n".join([
        f"Image: {args.layers} gzip layers, {args.size} uncompressed, {compressed} compressed; median of "
        f"{args.runs} runs; {info['nproc']} cores ({info['cpu']}); origin and remote are both local registries.",
        "",
        markdown_table(["job", "wall time (s)", "vs origin pull"], rows),
        "",
        f"Requests to the origin during the second machine's pulls: {origin_requests} (target 0).",
    ])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench remote", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="uncompressed image size (default 512M)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-remote")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
