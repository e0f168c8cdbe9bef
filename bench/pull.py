"""Registry pulls, side by side with skopeo, in one run against one local docker-registry.

    python -m bench pull [--size 1G] [--layers 4] [--runs 3]

Four jobs over the same image (several gzip layers, half random, half compressible):
  skopeo copy docker://… oci:NEW          (what a user does today, cold)
  skopeo copy docker://… oci:EXISTING     (the same again into the layout it wrote)
  layerhoard pull, empty cache            (cold)
  layerhoard pull, cached                 (warm; the registry's access log counts blob requests)
Each is the median of --runs runs. Targets (issue 3): cold at most 1.0x skopeo's wall time; warm at
most 0.15 s with zero blob bytes.

layerhoard runs as a user runs it: the `layerhoard` script of a fresh venv that this checkout is
pip-installed into (--in-place runs `python -m cli.main` with this interpreter instead). The
interpreter's own start-up (`python -c pass` in that venv) is reported beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from isal import igzip

from bench.common import installed_layerhoard
from cache.units import format_size, parse_size
from tests.images import OCI_CONFIG, OCI_MANIFEST, LayoutWriter
from tests.services import Registry, skopeo

LAYERHOARD = [sys.executable, "-m", "cli.main"]


def layer_tar(size: int, seed: int, compressible: bool) -> bytes:
    """A tar of one file of ``size`` bytes, built without tarfile's per-byte overhead."""
    import io
    import random
    import tarfile

    rng = random.Random(seed)
    if compressible:
        block = b" ".join(bytes(rng.choice(b"abcdefghij") for _ in range(8)) for _ in range(8192))
        content = (block * (size // len(block) + 1))[:size]
    else:  # randbytes of more than 256 MB overflows: join smaller pieces
        content = b"".join(rng.randbytes(min(1 << 26, size - i)) for i in range(0, size, 1 << 26))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(f"bench/layer{seed}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def build_layout(root: Path, total: int, layers: int) -> str:
    writer = LayoutWriter(root)
    descriptors, diff_ids = [], []
    for i in range(layers):
        tar = layer_tar(total // layers, 1000 + i, compressible=i % 2 == 1)
        blob = igzip.compress(tar, 1)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": writer.blob(blob), "size": len(blob)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": writer.blob(config), "size": len(config)},
                           "layers": descriptors}).encode()
    writer.tag("bench", OCI_MANIFEST, writer.blob(manifest), len(manifest))
    return format_size(sum(d["size"] for d in descriptors))  # type: ignore[misc]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return elapsed


def counted(command: list[str]) -> int | None:
    """Instructions one run of ``command`` executes (valgrind's callgrind), or None without valgrind.

    Wall times of a 0.1 s process swing with whatever else the 2 cores run; this count does not.
    """
    if shutil.which("valgrind") is None:
        return None
    result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                            capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    return int(found.group(1)) if found else None


def _millions(count: int | None) -> str:
    return "n/a (no valgrind)" if count is None else f"{count / 1e6:.0f} M"


def run(args: argparse.Namespace) -> str:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "registry").mkdir(parents=True)
    registry = Registry(work / "registry")
    try:
        compressed = build_layout(work / "layout", parse_size(args.size), args.layers)
        ref = f"{registry.host}/bench/pull:1"
        skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{work / 'layout'}:bench", f"docker://{ref}")
        skopeo_copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}"]
        layerhoard = LAYERHOARD if args.in_place else installed_layerhoard(work / "venv")
        python = sys.executable if args.in_place else str(work / "venv" / "bin" / "python")
        times: dict[str, list[float]] = {"skopeo_cold": [], "skopeo_existing": [], "cold": [], "warm": [],
                                         "python": []}
        warm_blob_requests = []
        for _ in range(args.runs):
            shutil.rmtree(work / "skopeo-out", ignore_errors=True)
            times["skopeo_cold"].append(timed([*skopeo_copy, f"oci:{work / 'skopeo-out'}:bench"]))
            times["skopeo_existing"].append(timed([*skopeo_copy, f"oci:{work / 'skopeo-out'}:bench"]))
            shutil.rmtree(work / "cache", ignore_errors=True)
            times["cold"].append(timed([*layerhoard, "--cache-dir", str(work / "cache"), "-q", "pull", ref]))
            os.sync()  # the cold runs' writeback must not land in the cached pulls' fsyncs
            for _ in range(args.warm_runs):  # short runs: more samples for a steady median
                mark = registry.mark()
                times["warm"].append(timed([*layerhoard, "--cache-dir", str(work / "cache"), "-q", "pull", ref]))
                warm_blob_requests.append(len(registry.blob_requests(mark)))
                times["python"].append(timed([python, "-c", "pass"]))
        instructions = {"warm": counted([*layerhoard, "--cache-dir", str(work / "cache"), "-q", "pull", ref]),
                        "python": counted([python, "-c", "pass"])}
    finally:
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        ("skopeo copy → new oci: layout", median["skopeo_cold"], "1.00"),
        ("skopeo copy → existing oci: layout", median["skopeo_existing"], "1.00"),
        ("layerhoard pull, empty cache", median["cold"], f"{median['cold'] / median['skopeo_cold']:.2f}"),
        ("layerhoard pull, cached", median["warm"], f"{median['warm'] / median['skopeo_existing']:.2f}"),
    ]
    lines = [
        f"Image: {args.layers} gzip layers, {args.size} uncompressed, {compressed} compressed; "
        f"median of {args.runs} runs ({args.runs * args.warm_runs} for the cached pull); {os.cpu_count()} cores.",
        "",
        "| job | wall time (s) | ratio to skopeo (same job) |",
        "|---|---|---|",
        *[f"| {name} | {seconds:.3f} | {ratio} |" for name, seconds, ratio in rows],
        "",
        f"Blob requests during the cached pulls: {warm_blob_requests} (target 0). "
        f"Interpreter start-up alone (`python -c pass`): {median['python']:.3f} s; layerhoard ran "
        f"{'in place (python -m cli.main)' if args.in_place else 'from a fresh venv install'}.",
        f"Instructions (callgrind, the same whatever else the machine runs): cached pull "
        f"{_millions(instructions['warm'])}, `python -c pass` {_millions(instructions['python'])}.",
        f"Cold ratio {median['cold'] / median['skopeo_cold']:.2f} (target ≤ 1.0); "
        f"cached pull {median['warm']:.3f} s (target ≤ 0.15 s).",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pull", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="uncompressed image size (default 1G)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=5, help="cached pulls per run (default 5)")
    parser.add_argument("--workdir", default="/tmp/layerhoard-bench-pull")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--in-place", action="store_true",
                        help="run `python -m cli.main` with this interpreter instead of a fresh venv install")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
