"""``gc --rebuild-index``: a new metadata index from blobs/ and index.json (invariant 6).

The damaged (or missing) meta/ folder is moved aside to ``meta.broken-<time>/`` and a new one is
filled from what is on disk and checked here:

- a blob record per file in blobs/: size and blake3 computed from the file;
- an image record per index.json entry (last use: the manifest's mtime; source "rebuilt");
- diff_id pairs only for layers we decompressed and hashed here, and only when the hash is the
  diff_id their image's config lists (invariant 4: never because a config merely says so);
- counters are copied from the old database when SQLite can still read those rows; pins live in
  pins.json and are untouched (an old cache's pins, still in its database, move to pins.json).

- the content graph's referrer edges, from the ``subject`` of every stored manifest; its cosign
  edges (nothing in a cosign manifest names its image) copied from the old database when SQLite
  can still read them.

SBOM scan records are not rebuilt: they are made again on the next ``sbom`` of each layer. Derived
edges (transcoded blobs) are not either: those blobs are a cache, and gc reclaims them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cache.errors import BlobNotFound, InvalidDigest, LayerhoardError
from cache.formats.index_json import REF_NAME
from cache.model.digest import Digest, hash_fd, parse_digest
from cache.model.manifests import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Manifest,
    parse_config,
    parse_manifest_or_index,
    subject_of,
)
from cache.store.blobstore import BlobStore
from cache.store.diffids import check_claim
from cache.store.graph import COSIGN, COSIGN_SUFFIXES, link_cosign, link_referrer
from cache.store.pins import PINS_FILE, pin, pins


@dataclass
class RebuildResult:
    blobs: int = 0
    images: int = 0
    diff_ids: int = 0
    pins: int = 0
    moved_to: Path | None = None


def rebuild_index(store: BlobStore) -> RebuildResult:
    """Replace the store's metadata index with one rebuilt from the files. Other processes may run:
    blobs recorded by them meanwhile are recorded again here, with the same values."""
    result = RebuildResult()
    store.close()
    meta = store.root / "meta"
    salvaged = _salvage(meta)
    with store.locks_folder.lock("meta.lock"):
        if meta.exists():
            result.moved_to = store.root / f"meta.broken-{int(time.time())}-{uuid.uuid4().hex[:8]}"  # unique
            os.rename(meta, result.moved_to)
    index = store.index  # a new, empty one
    legacy_pins = not (store.root / PINS_FILE).exists()
    for key, value in salvaged:
        if key.startswith("pin/") and legacy_pins:
            pin(store, key[4:])  # a cache from before pins.json: its pins move there now
        elif key.startswith("stat/") and isinstance(value, int):
            index.count(key[5:], value)
        elif key.startswith(f"edge/{COSIGN}/") and isinstance(value, str):
            _cosign_edges(store, key, value)
    for digest in list(store.digests()):
        try:
            with store.open(digest) as handle:
                size = os.fstat(handle.fileno()).st_size
                index.record_blob(digest, size, hash_fd(handle.fileno(), size, use_blake3=True), None, "rebuilt")
                if size <= MAX_MANIFEST_BYTES:  # a referrer names its subject: the graph's edge again
                    handle.seek(0)
                    named = subject_of(handle.read())
                    if named is not None:
                        link_referrer(store, named[0], digest, named[1])
        except BlobNotFound:
            continue  # removed meanwhile, or not a blob of ours (verify moves it aside)
        result.blobs += 1
    for entry in store.images():
        if _record_image(store, entry):
            result.images += 1
    result.diff_ids = _record_diff_ids(store)
    result.pins = len(pins(store))  # kept: pins.json is not part of the index
    return result


def _salvage(meta: Path) -> list[tuple[str, object]]:
    """Pins and counters from the old database, as far as SQLite can read them."""
    database = meta / "cache.db"
    if not database.exists():
        return []
    rows: list[tuple[str, object]] = []
    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            for key, value in connection.execute(
                "SELECT key, value FROM Cache WHERE key LIKE 'pin/%' OR key LIKE 'stat/%' OR key LIKE 'edge/cosign/%'"
            ):
                if isinstance(key, str):
                    rows.append((key, value))
        finally:
            connection.close()
    return rows


def _cosign_edges(store: BlobStore, key: str, value: str) -> None:
    """The old database's cosign edges of one manifest, as far as they parse."""
    with contextlib.suppress(ValueError, InvalidDigest):
        subject = parse_digest(key[len(f"edge/{COSIGN}/"):])
        children = json.loads(value)
        for child, suffix in children.items() if isinstance(children, dict) else ():
            if suffix in COSIGN_SUFFIXES:
                link_cosign(store, subject, parse_digest(child), suffix)


def _record_image(store: BlobStore, entry: dict[str, object]) -> bool:
    annotations = entry.get("annotations")
    ref = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    if not isinstance(ref, str):
        return False
    try:
        descriptor = Descriptor.from_json(entry, f"index.json entry {ref}")
        last_used = store.stat(descriptor.digest).st_mtime
    except (LayerhoardError, FileNotFoundError):
        return False
    store.index.record_image(ref, {
        "digest": str(descriptor.digest), "media_type": descriptor.media_type, "size": descriptor.size,
        "platform": str(descriptor.platform) if descriptor.platform else None, "source": "rebuilt",
    })
    record = store.index.image(ref)
    if record is not None:  # record_image stamps "now": the manifest's age is a better guess at last use
        record["last_used"] = record["stored_at"] = last_used
        store.index._set(f"image/{ref}", record)
    return True


def _record_diff_ids(store: BlobStore) -> int:
    """Hash the uncompressed bytes of every layer of every stored manifest once; record the pairs
    whose hash is the diff_id the manifest's config lists, and the claims it refutes (which verify
    reports, as it did before the rebuild)."""
    recorded = 0
    done: set[tuple[Digest, Digest]] = set()
    for digest in list(store.digests()):
        manifest = _manifest(store, digest)
        if manifest is None:
            continue
        try:
            config = parse_config(store.read_bytes(manifest.config.digest), f"config {manifest.config.digest}")
        except LayerhoardError:
            continue
        if len(config.diff_ids) != len(manifest.layers):
            continue
        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
            if (layer.digest, diff_id) in done or not store.has(layer.digest):
                continue
            done.add((layer.digest, diff_id))
            with contextlib.suppress(LayerhoardError):  # gone, or not a blob we published: not recorded
                result = check_claim(store, layer.digest, diff_id, layer.media_type)  # hashes a blob once
                recorded += result is not None and result.verified
    return recorded


def _manifest(store: BlobStore, digest: Digest) -> Manifest | None:
    try:
        if store.size(digest) > MAX_MANIFEST_BYTES:
            return None
        with store.open(digest) as handle:
            head = handle.read(1)
            if head != b"{":
                return None  # a layer or other binary blob
            raw = head + handle.read()
        json.loads(raw)
        parsed = parse_manifest_or_index(raw, what=f"blob {digest}")
    except (LayerhoardError, ValueError):
        return None
    return parsed if isinstance(parsed, Manifest) else None
