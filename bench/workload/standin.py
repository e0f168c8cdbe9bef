"""The baseline's SBOM step: a STAND-IN for a scanner such as syft, which is not installable here.

    python -m bench.workload.standin LAYOUT [TAG...]

A scanner must at least decompress every layer of every image it scans, and it scans each image
on its own (a shared base layer is read again for every image that has it). This does exactly
that and nothing more, with the fastest decompressors at hand (isal gzip, zstandard), so its time
is a lower bound on a real scanner's cost. Prints {"layers", "compressed", "uncompressed"} as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, cast

import zstandard
from isal import igzip

_CHUNK = 1 << 20


def opened(path: Path, media_type: str) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - the caller closes the decompressing wrapper, which closes this
    if media_type.endswith("gzip"):
        return cast(IO[bytes], igzip.IGzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]
    if media_type.endswith("zstd"):
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def scan(layout: Path, tags: list[str]) -> dict[str, int]:
    index = json.loads((layout / "index.json").read_text())
    totals = {"layers": 0, "compressed": 0, "uncompressed": 0}
    for entry in index["manifests"]:
        if tags and entry.get("annotations", {}).get("org.opencontainers.image.ref.name") not in tags:
            continue
        manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
        for layer in manifest["layers"]:
            path = layout / "blobs" / "sha256" / layer["digest"][7:]
            with opened(path, layer["mediaType"]) as stream:
                while chunk := stream.read(_CHUNK):
                    totals["uncompressed"] += len(chunk)
            totals["layers"] += 1
            totals["compressed"] += path.stat().st_size
    return totals


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(scan(Path(argv[0]), argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
