"""Cold vs cached SBOM of a multi-layer image of about 1 GB, against plain decompression.

    python -m bench.sbom [--size-mb 1024] [--layers 4] [--compression zstd|gzip] [--keep DIR]

Layers hold many files of 4-bit-entropy content (compresses about 2:1, so decompression does
real work), plus real evidence from this machine: dpkg status and copyright files, a Go binary
(skopeo, when installed) and synthetic dist-info and node_modules metadata. Reported:
- decompress: the same layer blobs only decompressed and discarded, in the same run;
- cold: every layer scanned from its blob (records forgotten first);
- cached: the same image again: records only, no layer opened;
- cached_cli: ``layerhoard sbom`` as a new process (start-up included), cached.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cache.formats.compression import DecompressingReader
from cache.ingest.pull import PullOptions, pull
from cache.model.manifests import compression_of
from cache.sbom import image_sbom
from cache.sbom.records import SbomRecords
from cache.store.blobstore import BlobStore
from cache.store.images import CachedImage, load_image
from tests.images import build_image, tar_of

_SYMBOLS = bytes(range(97, 113)) * 16  # 256 → 16 letters: 4 bits of entropy per byte


def _content(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size).translate(_SYMBOLS)


def _evidence(index: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if index == 0:
        files["var/lib/dpkg/status"] = Path("/var/lib/dpkg/status").read_bytes()
        files["etc/os-release"] = Path("/usr/lib/os-release").read_bytes()
        for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
            if path.is_file() and not path.is_symlink():
                files[str(path)[1:]] = path.read_bytes()
    elif index == 1:
        for n in range(200):
            files[f"usr/lib/python3/dist-packages/pkg{n}-1.{n}.dist-info/METADATA"] = \
                f"Metadata-Version: 2.1\nName: pkg{n}\nVersion: 1.{n}\nLicense: MIT\n\n".encode() + b"x" * 4000
    elif index == 2:
        for n in range(300):
            files[f"app/node_modules/mod{n}/package.json"] = json.dumps({"name": f"mod{n}", "version": f"2.{n}.0",
                                                                         "license": "ISC"}).encode()
    return files


def _layer(index: int, size: int) -> bytes:
    rng = random.Random(index)
    files = _evidence(index)
    made = sum(len(v) for v in files.values())
    number = 0
    while made < size:
        chunk = min(size - made, rng.choice([4 << 10, 32 << 10, 256 << 10, 2 << 20]))
        files[f"data{index}/d{number // 100}/f{number}.bin"] = _content(rng, chunk)
        made += chunk
        number += 1
    tar = tar_of(files)
    if index == 3 and Path("/usr/bin/skopeo").is_file():
        tar = _with_executable(tar, "usr/bin/skopeo", Path("/usr/bin/skopeo").read_bytes())
    return tar


def _with_executable(tar: bytes, name: str, content: bytes) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar)) as source, tarfile.open(fileobj=out, mode="w",
                                                                        format=tarfile.PAX_FORMAT) as target:
        for member in source.getmembers():
            target.addfile(member, source.extractfile(member) if member.isreg() else None)
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(content), 0o755
        target.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _decompress_only(image: CachedImage) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    for layer in image.layers:
        with image.open_layer(layer) as raw:
            stream = DecompressingReader(raw, compression_of(layer.media_type))
            while chunk := stream.read(1 << 20):
                total += len(chunk)
    return time.perf_counter() - started, total


def run(size_mb: int, layers: int, compression: str, work: Path) -> dict[str, object]:
    store = BlobStore(work / "cache")
    per_layer = size_mb * (1 << 20) // layers
    started = time.perf_counter()
    build_image(work / "layout", [_layer(i, per_layer) for i in range(layers)], tag="bench", compression=compression)
    report = pull(store, f"oci:{work / 'layout'}:bench", PullOptions(name="bench/sbom:1"))
    built = time.perf_counter() - started
    image = load_image(store, report.ref)
    records = SbomRecords(store.index)
    result: dict[str, object] = {"layers": layers, "compression": compression, "build_seconds": round(built, 1),
                                 "stored_bytes": sum(layer.size for layer in image.layers)}
    decompress_s, uncompressed = _decompress_only(image)
    result["uncompressed_bytes"] = uncompressed
    result["decompress_s"] = round(decompress_s, 3)
    for diff_id in image.config.diff_ids:
        records.forget(str(diff_id))
    cold = image_sbom(image)
    result["cold_s"] = round(cold.seconds, 3)
    result["cold_vs_decompress"] = round(decompress_s / cold.seconds, 2)
    result["packages"] = len(cold.packages)
    cached = min((image_sbom(load_image(store, report.ref)) for _ in range(5)), key=lambda s: s.seconds)
    assert cached.layers_scanned == 0
    result["cached_s"] = round(cached.seconds, 4)
    cli = shutil.which("layerhoard")
    if cli:
        times = []
        for _ in range(3):
            begin = time.perf_counter()
            subprocess.run([cli, "--cache-dir", str(work / "cache"), "-q", "sbom", report.ref, "-o",
                            str(work / "bom.json")], check=True)
            times.append(time.perf_counter() - begin)
        result["cached_cli_s"] = round(min(times), 3)
    store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sbom", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--compression", choices=["zstd", "gzip"], default="zstd")
    parser.add_argument("--keep", type=Path, help="Work here and keep it (default: a temporary folder).")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.size_mb, args.layers, args.compression, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-sbom-") as work:
            result = run(args.size_mb, args.layers, args.compression, Path(work))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
