"""Daemon images, side by side with `docker save` and skopeo, in one run against one private dockerd.

    python -m bench daemon [--size 1G] [--size 2G] [--runs 1] [--workdir DIR] [--keep] [--in-place]

For each size, a single-layer image of random bytes is imported into a private dockerd, then:
  docker save -o FILE                                  (the daemon's own export, the yardstick)
  skopeo copy docker-daemon:NAME oci:DIR               (what a user does today)
  layerhoard pull docker-daemon:NAME, empty cache      (cold: one save stream, zstd into the store)
  layerhoard pull docker-daemon:NAME, cached           (warm: inspect only, no save call)
Wall times and CPU (user + system seconds of the process itself) are the median of --runs; peak
RSS is the child's own (VmHWM). The daemon's own save stream is timed once per size (time to its
first byte, then to its end) to show how much of every contender's time is spent waiting. The daemon's debug log
proves how many `GET /images/…/get` each layerhoard run made. Targets (issue 4): cold at most 1.1x
docker save; peak RSS at most 100 MB and flat from 1 GB to 2 GB; cached under 0.5 s, no save.

layerhoard runs as a user runs it, the `layerhoard` script of a fresh venv that this checkout is
pip-installed into (as in bench/pull.py); --in-place runs `python -m cli.main` with this interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import installed_layerhoard, machine, markdown_table
from cache.units import format_size, parse_size
from tests.services import Daemon

LAYERHOARD = [sys.executable, "-m", "cli.main"]


@dataclass
class Measured:
    wall: float
    peak_rss: int
    cpu: float = 0.0  # user + system seconds of the process itself (its children not counted)


def _hwm(pid: int) -> int:
    """The process's own peak RSS so far (VmHWM), in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def measure(argv: Sequence[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``argv`` to completion; its wall time and its own peak RSS.

    VmHWM is polled rather than taken from wait4: a forked child's ru_maxrss starts at the
    parent's size (Linux keeps it across exec), which would report this script's memory.
    """
    start = time.perf_counter()
    process = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    peak = 0
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    while True:
        peak = max(peak, _hwm(process.pid))
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}: {b''.join(errors).decode()[-500:]}")
    return Measured(wall, peak, usage.ru_utime + usage.ru_stime)


def raw_save(socket_path: Path, name: str) -> tuple[float, float]:
    """The daemon alone: seconds to the save stream's first byte, and from there to its end.

    dockerd before 25 exports the whole image to a temporary folder before it sends a byte, so
    every client waits the first figure; only the second is left to read, check and store.
    """
    import http.client
    import socket

    connection = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(socket_path))
    connection.sock = sock
    start = time.perf_counter()
    connection.request("GET", f"/images/{name}/get")
    response = connection.getresponse()
    buffer = memoryview(bytearray(1 << 20))
    first = None
    while response.readinto(buffer):
        first = first or time.perf_counter()
    end = time.perf_counter()
    connection.close()
    return (first or end) - start, end - (first or end)


def random_tar(path: Path, size: int, content: str = "random") -> None:
    """A tar holding one file of ``size`` bytes, written in 16 MiB pieces (never all in memory).

    "random": incompressible, the worst case (the zstd blob is as large as the layer, and all of
    it must reach the disk). "mixed": every other piece is text-like and compresses about 4:1, as
    much of a real layer (binaries, libraries, text) does.
    """
    payload = path.with_suffix(".bin")
    text = b" ".join(f"line {i} of a configuration file, word {i % 97}".encode() for i in range(5000))[:48 << 10]
    with open(payload, "wb") as handle:
        left, index = size, 0
        while left:
            piece = min(left, 16 << 20)
            if content == "mixed" and index % 2 == 1:  # 48 KiB of text, 16 KiB of noise, repeated
                data = b"".join(text + os.urandom(16 << 10) for _ in range(piece // (64 << 10) + 1))[:piece]
            else:
                data = os.urandom(piece)
            handle.write(data)
            left -= piece
            index += 1
    with tarfile.open(path, "w") as tar:
        tar.add(payload, arcname="data/random.bin")
    payload.unlink()


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_size(daemon: Daemon, work: Path, size: int, runs: int, layerhoard: list[str],
               content: str = "random") -> dict[str, object]:
    name = f"lh-bench/one-layer:{size >> 20}m"
    source = work / "layer.tar"
    random_tar(source, size, content)
    daemon.docker("import", str(source), name, check=True)
    source.unlink()
    env = {"DOCKER_HOST": daemon.host}
    saved = work / "saved.tar"
    measure(["docker", "save", "-o", str(saved), name], env)  # warm the page cache for every contender
    saved.unlink()
    first_byte, streaming = raw_save(daemon.socket, name)

    save, copy, cold, cached = [], [], [], []
    cold_saves: list[int] = []
    cached_saves: list[int] = []
    for _ in range(runs):
        save.append(measure(["docker", "save", "-o", str(saved), name], env))
        saved.unlink()
        layout = work / "skopeo-oci"
        copy.append(measure(["skopeo", "copy", "--quiet", "--src-daemon-host", daemon.host,
                             f"docker-daemon:{name}", f"oci:{layout}:bench"]))
        shutil.rmtree(layout)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        pull = [*layerhoard, "--cache-dir", str(cache), "--json", "-q", "pull", f"docker-daemon:{name}",
                "--docker-host", daemon.host]
        mark = daemon.mark()
        cold.append(measure(pull))
        cold_saves.append(len(daemon.save_calls(mark)))
        mark = daemon.mark()
        cached.append(measure(pull))
        cached_saves.append(len(daemon.save_calls(mark)))
        shutil.rmtree(cache)
    daemon.docker("rmi", name, check=True)
    def summary(runs: list[Measured]) -> Measured:
        return Measured(median([m.wall for m in runs]), max(m.peak_rss for m in runs), median([m.cpu for m in runs]))

    return {
        "size": size,
        "first_byte": first_byte,
        "streaming": streaming,
        "save": summary(save),
        "skopeo": summary(copy),
        "cold": summary(cold),
        "cached": summary(cached),
        "cold_saves": max(cold_saves),
        "cached_saves": max(cached_saves),
    }


def report(results: list[dict[str, object]], runs: int) -> str:
    rows = []
    for result in results:
        size = int(result["size"])  # type: ignore[call-overload]
        save: Measured = result["save"]  # type: ignore[assignment]
        for label, key in (("docker save -o FILE", "save"), ("skopeo docker-daemon: → oci:", "skopeo"),
                           ("layerhoard pull, cold", "cold"), ("layerhoard pull, cached", "cached")):
            measured: Measured = result[key]  # type: ignore[assignment]
            saves = {"cold": result["cold_saves"], "cached": result["cached_saves"]}.get(key, "")
            rows.append([format_size(size), label, f"{measured.wall:.2f} s", f"{measured.wall / save.wall:.2f}x",
                         f"{measured.cpu:.2f} s", f"{measured.peak_rss / 1e6:.0f} MB", saves])
    info = machine(Path("/tmp"))
    header = (f"{info['cpu']}, {info['nproc']} cores, kernel {info['kernel']}, Python {info['python']}, "
              f"{info['filesystem']}; median of {runs} run(s); a single layer; "
              f"load average {os.getloadavg()[0]:.2f} at the end\n\n")
    daemon_alone = "".join(
        f"- {format_size(int(r['size']))}: the daemon's save stream alone (read and dropped): "  # type: ignore[call-overload]
        f"first byte after {r['first_byte']:.2f} s, then {r['streaming']:.2f} s to its end\n"
        for r in results
    )
    return header + markdown_table(
        ["image", "job", "wall", "vs docker save", "CPU (user+sys)", "peak RSS", "save calls"], rows
    ) + "\n" + daemon_alone


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", help="image size; repeat for several (default 1G)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-daemon")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--content", choices=["random", "mixed"], default="random",
                        help="layer bytes: random (incompressible, the worst case) or mixed (half compresses 4:1)")
    parser.add_argument("--in-place", action="store_true",
                        help="run `python -m cli.main` with this interpreter instead of a fresh venv install")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in (args.size or ["1G"])]
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "dockerd").mkdir(parents=True)
    layerhoard = LAYERHOARD if args.in_place else installed_layerhoard(work / "venv")
    daemon = Daemon(work / "dockerd")
    try:
        results = [bench_size(daemon, work, size, args.runs, layerhoard, args.content) for size in sizes]
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(results, args.runs))
    print(f"Layer content: {args.content}; layerhoard ran "
          f"{'in place (python -m cli.main)' if args.in_place else 'from a fresh venv install'}.")
    return 0
