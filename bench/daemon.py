"""Daemon images, side by side with `docker save` and skopeo, in one run against one private dockerd.

    python -m bench daemon [--size 1G] [--size 2G] [--runs 1] [--content random|mixed|real]
                           [--new-layer 10M] [--workdir DIR] [--keep] [--in-place]

For each size, an image is put into a private dockerd (overlay2): with --content random or mixed
a single layer imported from a tar; with --content real two layers loaded from a docker save tar,
one of real files (/usr/lib, then /usr/share, up to half the size) and one of random bytes. Then:
  docker save -o FILE                                  (the daemon's own export, the yardstick)
  skopeo copy docker-daemon:NAME oci:DIR               (what a user does today)
  layerhoard pull docker-daemon:NAME, empty cache      (cold: new layers read from overlay2, zstd into the store)
  the same with LAYERHOARD_NO_DAEMON_STORAGE=1         (cold through one save stream, the fallback)
  layerhoard pull docker-daemon:NAME, cached           (warm: inspect only, no save call)
With --new-layer, an image of one more layer of that many random bytes on top (docker build,
FROM and COPY) is then pulled into a cache that holds the base: against docker save -o and
skopeo of that image, which have no cache to lean on.
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
import hashlib
import io
import json
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


def real_files_tar(path: Path, size: int) -> int:
    """A layer tar of real files (/usr/lib, then /usr/share, in walk order) of about ``size`` bytes
    of file data, with their folders and links as they are; returns the bytes of file data."""
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for top in ("/usr/lib", "/usr/share"):
            for folder, dirs, files in os.walk(top):
                dirs.sort()
                tar.add(folder, arcname=folder.lstrip("/"), recursive=False)
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    try:
                        info = tar.gettarinfo(full, arcname=full.lstrip("/"))
                        if info.isreg():
                            if total + info.size > size:
                                continue
                            with open(full, "rb") as handle:
                                tar.addfile(info, handle)
                            total += info.size
                        elif info.issym():
                            tar.addfile(info)
                    except OSError:  # unreadable or vanished: a user's image would not have it either
                        continue
                if total >= size * 0.999:
                    return total
    return total


def real_image(daemon: Daemon, work: Path, size: int, name: str) -> None:
    """Load a two-layer image: real files (half of ``size``) and random bytes (the other half), as a
    docker save tar in the legacy layout (what dockerd 20.10 loads)."""
    files, noise = work / "files.tar", work / "noise.tar"
    real_files_tar(files, size // 2)
    random_tar(noise, size - size // 2)
    diff_ids = [_sha256_file(files), _sha256_file(noise)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    save = work / "image.tar"
    with tarfile.open(save, "w") as tar:
        for folder, layer in (("files", files), ("noise", noise)):
            tar.add(layer, arcname=f"{folder}/layer.tar")
        for member, data in ((config_name, config), ("manifest.json", json.dumps([{
            "Config": config_name, "RepoTags": [name], "Layers": ["files/layer.tar", "noise/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files.unlink()
    noise.unlink()
    daemon.docker("load", "-i", str(save), check=True)
    save.unlink()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def new_layer_image(daemon: Daemon, work: Path, base: str, size: int) -> str:
    """``base`` with one more layer of ``size`` random bytes, made by docker build (FROM, COPY)."""
    name = base.replace(":", "-app:")
    context = work / "context"
    context.mkdir()
    (context / "new.bin").write_bytes(os.urandom(size))
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY new.bin /new.bin\n")
    env = {**os.environ, "DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "0"}
    subprocess.run(["docker", "build", "-q", "-t", name, str(context)], env=env, check=True, capture_output=True)
    shutil.rmtree(context)
    return name


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_size(daemon: Daemon, work: Path, size: int, runs: int, layerhoard: list[str],
               content: str = "random", new_layer: int = 0) -> dict[str, object]:
    name = f"lh-bench/{'real' if content == 'real' else 'one-layer'}:{size >> 20}m"
    if content == "real":
        real_image(daemon, work, size, name)
    else:
        source = work / "layer.tar"
        random_tar(source, size, content)
        daemon.docker("import", str(source), name, check=True)
        source.unlink()
    env = {"DOCKER_HOST": daemon.host}
    saved = work / "saved.tar"
    measure(["docker", "save", "-o", str(saved), name], env)  # warm the page cache for every contender
    saved.unlink()
    first_byte, streaming = raw_save(daemon.socket, name)

    timings: dict[str, list[Measured]] = {key: [] for key in ("save", "skopeo", "cold", "cold_stream", "cached")}
    saves: dict[str, list[int]] = {"cold": [], "cold_stream": [], "cached": []}
    cache = work / "cache"

    def pull(image: str, key: str, extra_env: dict[str, str] | None = None) -> None:
        argv = [*layerhoard, "--cache-dir", str(cache), "--json", "-q", "pull", f"docker-daemon:{image}",
                "--docker-host", daemon.host]
        mark = daemon.mark()
        timings[key].append(measure(argv, extra_env))
        saves[key].append(len(daemon.save_calls(mark)))

    def others(image: str, save_key: str, skopeo_key: str) -> None:
        timings[save_key].append(measure(["docker", "save", "-o", str(saved), image], env))
        saved.unlink()
        layout = work / "skopeo-oci"
        timings[skopeo_key].append(measure(["skopeo", "copy", "--quiet", "--src-daemon-host", daemon.host,
                                            f"docker-daemon:{image}", f"oci:{layout}:bench"]))
        shutil.rmtree(layout)

    for _ in range(runs):
        others(name, "save", "skopeo")
        shutil.rmtree(cache, ignore_errors=True)
        pull(name, "cold_stream", {"LAYERHOARD_NO_DAEMON_STORAGE": "1"})
        shutil.rmtree(cache)
        pull(name, "cold")
        pull(name, "cached")
        shutil.rmtree(cache)
    app = new_layer_image(daemon, work, name, new_layer) if new_layer else None
    if app is not None:
        timings.update({"app_save": [], "app_skopeo": [], "app_pull": []})
        saves["app_pull"] = []
        measure(["docker", "save", "-o", str(saved), app], env)  # the new layer into the page cache too
        saved.unlink()
        for _ in range(runs):
            others(app, "app_save", "app_skopeo")
            shutil.rmtree(cache, ignore_errors=True)
            pull(name, "cached")  # the base into the cache (not timed apart: the cold figure above)
            timings["cached"].pop()
            saves["cached"].pop()
            pull(app, "app_pull")
            shutil.rmtree(cache)
        daemon.docker("rmi", app, check=True)
    daemon.docker("rmi", name, check=True)

    def summary(runs: list[Measured]) -> Measured:
        return Measured(median([m.wall for m in runs]), max(m.peak_rss for m in runs), median([m.cpu for m in runs]))

    return {
        "size": size, "first_byte": first_byte, "streaming": streaming, "new_layer": new_layer,
        **{key: summary(values) for key, values in timings.items()},
        **{f"{key}_saves": max(values) for key, values in saves.items()},
    }


def report(results: list[dict[str, object]], runs: int) -> str:
    rows = []
    for result in results:
        size = int(result["size"])  # type: ignore[call-overload]
        jobs = [("docker save -o FILE", "save", "save"), ("skopeo docker-daemon: → oci:", "skopeo", "save"),
                ("layerhoard pull, cold (overlay2)", "cold", "save"),
                ("layerhoard pull, cold (save stream)", "cold_stream", "save"),
                ("layerhoard pull, cached", "cached", "save")]
        if result.get("app_pull") is not None:
            new = format_size(int(result["new_layer"]))  # type: ignore[call-overload]
            jobs += [(f"+{new} layer: docker save -o FILE", "app_save", "app_save"),
                     (f"+{new} layer: skopeo", "app_skopeo", "app_save"),
                     (f"+{new} layer: layerhoard pull, base cached", "app_pull", "app_save")]
        for label, key, yardstick in jobs:
            measured: Measured = result[key]  # type: ignore[assignment]
            against: Measured = result[yardstick]  # type: ignore[assignment]
            rows.append([format_size(size), label, f"{measured.wall:.2f} s", f"{measured.wall / against.wall:.2f}x",
                         f"{measured.cpu:.2f} s", f"{measured.peak_rss / 1e6:.0f} MB", result.get(f"{key}_saves", "")])
    info = machine(Path("/tmp"))
    header = (f"{info['cpu']}, {info['nproc']} cores, kernel {info['kernel']}, Python {info['python']}, "
              f"{info['filesystem']}; median of {runs} run(s); "
              f"load average {os.getloadavg()[0]:.2f} at the end\n\n")
    daemon_alone = "".join(
        f"- {format_size(int(r['size']))}: the daemon's save stream alone (read and dropped): "  # type: ignore[call-overload]
        f"first byte after {r['first_byte']:.2f} s, then {r['streaming']:.2f} s to its end\n"
        for r in results
    )
    return header + markdown_table(
        ["image", "job", "wall", "vs docker save of that image", "CPU (user+sys)", "peak RSS", "save calls"], rows
    ) + "\n" + daemon_alone


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", help="image size; repeat for several (default 1G)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-daemon")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--content", choices=["random", "mixed", "real"], default="random",
                        help="layer bytes: random (incompressible, the worst case), mixed (half compresses 4:1), "
                             "or real (two layers: files from /usr, random bytes)")
    parser.add_argument("--new-layer", default="0",
                        help="then time an image of one more layer of this size on the cached base (like 10M)")
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
        results = [bench_size(daemon, work, size, args.runs, layerhoard, args.content, parse_size(args.new_layer))
                   for size in sizes]
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(results, args.runs))
    print(f"Layer content: {args.content}; layerhoard ran "
          f"{'in place (python -m cli.main)' if args.in_place else 'from a fresh venv install'}.")
    return 0
