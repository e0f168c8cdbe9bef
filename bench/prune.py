"""prune of a cache with 10,000 blobs and 500 images (target under 2 s), and what the standing policy
check adds after a write (target under 5 percent of a pull).

The cache is made directly on disk (blob files, index.json, image records) so that building it
takes seconds; the blobs are small, because prune never reads a layer, only manifests and sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import best_of, machine, markdown_table, timed
from cache.formats.index_json import REF_NAME
from cache.model.digest import sha256_of
from cache.store.blobstore import BlobStore
from cache.upkeep.policy import apply_after_write, set_value
from cache.upkeep.prune import PrunePolicy, plan_prune, prune

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def build(root: Path, blobs: int, images: int, per_image: int) -> BlobStore:
    store = BlobStore(root)
    layers = []
    for i in range(blobs - images - 1):
        data = f"layer {i}".encode() * 8
        digest = sha256_of(data)
        store.path(digest).write_bytes(data)
        layers.append((digest, len(data)))
    config = b"{}"
    store.path(sha256_of(config)).write_bytes(config)
    entries: list[dict[str, object]] = []
    for n in range(images):
        chosen = [layers[(n * per_image // 2 + k) % len(layers)] for k in range(per_image)]  # half shared
        raw = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(sha256_of(config)), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(d), "size": s}
                       for d, s in chosen],
        }).encode()
        digest = sha256_of(raw)
        store.path(digest).write_bytes(raw)
        ref = f"example.com/app/{n}:1"
        entries.append({"mediaType": MANIFEST, "digest": str(digest), "size": len(raw),
                        "annotations": {REF_NAME: ref}})
        store.index.record_image(ref, {"digest": str(digest), "media_type": MANIFEST, "size": len(raw)})
    with store.index_json_lock():
        store.replace_images(entries)
    old = time.time() - 86400
    for digest in store.digests():
        os.utime(store.path(digest), (old, old))
    return store


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench prune", description=__doc__)
    parser.add_argument("--blobs", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--layers", type=int, default=40, help="layers per image")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=os.environ.get("LAYERHOARD_BENCH_DIR")) as folder:
        store, build_seconds = timed(lambda: build(Path(folder) / "cache", args.blobs, args.images, args.layers))
        total = sum(store.path(d).stat().st_size for d in store.digests())
        plan_seconds = best_of(3, lambda: timed(lambda: plan_prune(store, PrunePolicy(max_size=total // 2)))[1])
        no_policy = best_of(5, lambda: timed(lambda: apply_after_write(store, 1))[1])
        set_value(store.root, "max-size", str(total * 2))
        cached_pull = best_of(5, lambda: timed(lambda: apply_after_write(store, 0))[1])
        fetching_pull = best_of(5, lambda: timed(lambda: apply_after_write(store, 1))[1])
        plan = plan_prune(store, PrunePolicy(max_size=total // 2))
        done, prune_seconds = timed(lambda: prune(store, PrunePolicy(max_size=total // 2)))
        assert done is not None and len(done.images) == len(plan.images)
        print(json.dumps(machine(Path(folder)), indent=2))
        print(f"cache: {args.blobs} blobs, {args.images} images, {total} bytes (built in {build_seconds:.1f}s)\n")
        print(markdown_table(["step", "seconds"], [
            ["plan_prune (dry run), best of 3", f"{plan_seconds:.3f}"],
            [f"prune --max-size half: evicts {len(done.images)} images, deletes {len(done.blobs)} blobs",
             f"{prune_seconds:.3f}"],
            ["policy check after a write, no config.json", f"{no_policy:.5f}"],
            ["policy check, max-size set, cached pull (nothing fetched)", f"{cached_pull:.5f}"],
            ["policy check, max-size set, pull that fetched (sums blob sizes)", f"{fetching_pull:.5f}"],
        ]))
        store.close()
    return 0
