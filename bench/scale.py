"""The cache at scale (issue 15): ls, du, gc, `prune --dry-run` and `verify --fast` at 10,000 images
and 100,000 blobs (target: each under 2 s), and what recording one more image costs in a full
cache against an empty one (target: within 1.5x).

The big cache is made directly on disk (small blob files, their metadata records, index.json), as
bench/prune.py does: these commands read manifests, sizes and records, never a layer's bytes, so
small blobs measure what they cost. The commands run as a user runs them, one process each, so
start-up is included. The per-image cost is measured through the library: a pull of a small OCI
layout (its blobs already stored, as in a warm whose images share layers) into an empty cache and
into the big one, so what differs is only what the cache's size adds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import REPO_ROOT, machine, markdown_table
from cache.formats.index_json import REF_NAME
from cache.ingest.pull import PullOptions, pull
from cache.ingest.warm import warm
from cache.model.digest import Digest, Hasher
from cache.store.blobstore import BlobStore

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _put(store: BlobStore, data: bytes, media_type: str) -> tuple[Digest, int]:
    hasher = Hasher()
    hasher.update(data)
    digest = hasher.digest
    path = store.path(digest)
    path.write_bytes(data)
    os.chmod(path, 0o444)
    store.index.record_blob(digest, len(data), hasher.blake3, media_type, "bench")
    return digest, len(data)


def build(root: Path, blobs: int, images: int, per_image: int) -> BlobStore:
    """A cache of ``images`` images over ``blobs`` blobs; neighbouring images share half their layers."""
    store = BlobStore(root)
    entries: list[dict[str, object]] = []
    with store.index.batch():
        layers = [_put(store, f"layer {i}\n".encode() * 4, LAYER) for i in range(blobs - 2 * images)]
        for n in range(images):
            config = _put(store, json.dumps({"architecture": "amd64", "os": "linux", "n": n,
                                             "rootfs": {"type": "layers", "diff_ids": []}}).encode(), CONFIG)
            chosen = [layers[(n * per_image // 2 + k) % len(layers)] for k in range(per_image)]
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": str(config[0]), "size": config[1]},
                "layers": [{"mediaType": LAYER, "digest": str(d), "size": s} for d, s in chosen],
            }).encode()
            digest, size = _put(store, manifest, MANIFEST)
            ref = f"example.com/team/app{n}:1"
            entries.append({"mediaType": MANIFEST, "digest": str(digest), "size": size,
                            "annotations": {REF_NAME: ref}})
            store.index.record_image(ref, {"digest": str(digest), "media_type": MANIFEST, "size": size})
    with store.index_json_lock():
        store.replace_images(entries)
    return store


def cache_parser(name: str, doc: str, images: int, blobs: int) -> argparse.ArgumentParser:
    """The command line of benchmark ``name`` over a cache made by :func:`build` (scale, view)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc.splitlines()[0])
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--blobs", type=int, default=blobs)
    parser.add_argument("--layers", type=int, default=8, help="layers per image")
    return parser


@contextlib.contextmanager
def synthetic_cache(args: argparse.Namespace, name: str) -> Iterator[tuple[Path, BlobStore, float]]:
    """A temporary folder holding a cache made by :func:`build` from ``args`` (see
    :func:`cache_parser`) as ``<folder>/<name>``: (folder, store, seconds to build)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("LAYERHOARD_BENCH_DIR")) as folder:
        started = time.perf_counter()
        store = build(Path(folder) / name, args.blobs, args.images, args.layers)
        yield Path(folder), store, time.perf_counter() - started


def _cli_seconds(cache: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "--json", *args],
                   check=True, capture_output=True, cwd=REPO_ROOT)
    return time.perf_counter() - started


def small_layouts(folder: Path, count: int) -> list[str]:
    """``count`` OCI layouts of one image each, all over one shared layer and config (so a pull stores
    only its manifest and names it: the per-image cost that index.json and the index add)."""
    from tests.images import build_image, random_layer

    base = build_image(folder / "base", [random_layer(2000, 1)], tag="1")
    sources = []
    for n in range(count):
        layout = folder / f"img{n}"
        layout.mkdir()
        os.symlink(base.layout / "blobs", layout / "blobs")
        (layout / "oci-layout").write_bytes((base.layout / "oci-layout").read_bytes())
        index = json.loads((base.layout / "index.json").read_text())
        index["manifests"][0]["annotations"] = {REF_NAME: "1", "n": str(n)}  # a distinct name per image
        (layout / "index.json").write_text(json.dumps(index))
        sources.append(f"oci:{layout}:1")
    return sources


def per_image_seconds(store: BlobStore, sources: list[str]) -> float:
    started = time.perf_counter()
    result = warm(store, sources, PullOptions())
    assert not result.failures, result.failures[:3]
    return (time.perf_counter() - started) / len(sources)


def main(argv: list[str]) -> int:
    parser = cache_parser("scale", __doc__, images=10_000, blobs=100_000)
    parser.add_argument("--warm", type=int, default=200, help="images recorded for the per-image cost")
    args = parser.parse_args(argv)
    with synthetic_cache(args, "big") as (root, store, built):
        rows = [[" ".join(command), f"{_cli_seconds(store.root, *command):.2f}"] for command in (
            ("ls",), ("du",), ("gc", "--dry-run"), ("prune", "--dry-run", "--max-size", "1M"),
            ("verify", "--fast"))]
        sources = small_layouts(root / "layouts", 2 * args.warm)
        empty = BlobStore(root / "empty")
        pull(empty, sources[0], PullOptions())  # its shared layer and config stored, as in the big one
        pull(store, sources[0], PullOptions())
        into_empty = per_image_seconds(empty, sources[1:args.warm])
        into_big = per_image_seconds(store, sources[args.warm:])
        print(json.dumps(machine(root), indent=2))
        print(f"cache: {args.images} images, {args.blobs} blobs, {args.layers} layers per image "
              f"(built in {built:.0f} s)\n")
        print(markdown_table(["command (one process, start-up included)", "seconds"], rows))
        print()
        print(markdown_table(["recording one more image (warm of small images)", "ms per image"], [
            ["into an empty cache", f"{into_empty * 1000:.1f}"],
            [f"into the cache of {args.images} images", f"{into_big * 1000:.1f}"],
            ["ratio (target at most 1.5)", f"{into_big / into_empty:.2f}"],
        ]))
    return 0
