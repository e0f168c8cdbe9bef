"""Delivery bundles: every image of a lock file in one OCI image layout, less what the site holds.

    export --locked FILE [--exclude-from INVENTORY|oci:DIR|docker://REGISTRY/REPO] DST
    DST: oci:DIR (a new or empty folder), oci-archive:FILE, or - (the oci-archive tar on stdout)

A bundle is an OCI image layout (image-layout spec 1.0): ``oci-layout``, ``index.json`` naming
each image with ``org.opencontainers.image.ref.name`` (referrers listed unnamed), ``blobs/sha256``.
Every manifest and index of a locked image is written; a config or layer that the exclusion lists
is left out. Without exclusions skopeo and podman read any image of it (``oci:DIR:NAME``,
``oci-archive:FILE:NAME``); with them, an image whose blobs were left out can be read only where
those blobs are, which is what ``layerhoard import`` does at the site.

What the bundle assumes the other side holds is written in ``layerhoard-bundle.json`` beside
``index.json`` (``{"bundleVersion", "assumes": {digest: size}, "excludedFrom", "lock"}``): the
lock it was made from tells the site what each unnamed manifest is (a referrer, or which cosign
tag of which subject it is).
A file of its own rather than an annotation of index.json: an annotation is a string meant for
short facts and the list holds thousands of digests, and every OCI tool parses index.json while
none reads this file, so they are not slowed or confused by it. In a tar it is the second member,
before index.json and every blob, so a reader can refuse a bundle before reading any blob.

What it costs: an ``oci:`` bundle on the cache's file system is hard links (no blob copied);
a tar streams each blob from the store with sendfile, nothing held in memory but manifests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cache.delivery.inventory import Inventory
from cache.delivery.lock import LockFile
from cache.errors import BlobNotFound, DeliveryError, InvalidManifest
from cache.formats.index_json import REF_NAME, encode_document, encode_line
from cache.model.digest import Digest
from cache.model.manifests import Descriptor, children_of, parse_manifest_or_index
from cache.progress import ProgressFactory, no_progress
from cache.sinks import output_stream
from cache.sinks.archive import TarWriter
from cache.sinks.layout import write_layout
from cache.store.blobstore import LAYOUT_VERSION, BlobStore
from cache.store.fsutil import write_atomic

BUNDLE_FILE = "layerhoard-bundle.json"
BUNDLE_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One index.json entry of the bundle and the blobs it needs that the bundle carries."""

    descriptor: Descriptor
    name: str | None  # None for a referrer: listed, unnamed
    blobs: list[Digest]  # children first, the manifest or index last


@dataclass
class BundlePlan:
    entries: list[Entry] = field(default_factory=list)
    assumes: dict[Digest, int] = field(default_factory=dict)  # left out: the other side holds them
    excluded_from: str | None = None
    lock: LockFile | None = None

    def blobs(self) -> list[Digest]:
        return list(dict.fromkeys(d for entry in self.entries for d in entry.blobs))

    def record(self) -> bytes:
        """The bundle's own file: what it assumes, against what, and the lock it carries."""
        document = {
            "assumes": {str(d): size for d, size in sorted(self.assumes.items())},
            "bundleVersion": BUNDLE_VERSION,
            "excludedFrom": self.excluded_from,
            "lock": self.lock.to_json() if self.lock else None,
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()

    def index_json(self) -> bytes:
        lines = []
        for entry in self.entries:
            data = entry.descriptor.to_json()
            if entry.name is not None:
                data["annotations"] = {**entry.descriptor.annotations, REF_NAME: entry.name}
            lines.append(encode_line(data))
        return encode_document(lines)


@dataclass
class BundleReport:
    destination: str
    images: int = 0
    blobs_written: int = 0
    blobs_assumed: int = 0
    bytes_assumed: int = 0
    bytes_written: int = 0  # the bundle's size: the tar, or the files of the folder
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_bundle(store: BlobStore, lock: LockFile, exclude: Inventory | None = None) -> BundlePlan:
    """What a bundle of ``lock`` holds: every locked manifest and index, and each config and layer
    the exclusion does not list. Each one must be stored: a locked image the cache lacks fails
    naming it (``warm --locked`` brings it)."""
    held = exclude.blobs if exclude is not None else {}
    plan = BundlePlan(excluded_from=exclude.target if exclude else None, lock=lock)
    for image in lock.images.values():
        if not store.has(image.digest):
            raise DeliveryError(f"{image.name}: locked digest {image.digest} is not in the cache; "
                                "run `layerhoard warm --locked` first")
        locked = [*image.platforms.values()]
        plan.entries.append(Entry(_descriptor(store, image.digest, image.media_type), image.name,
                                  _carried(store, image.name, image.digest, locked, held, plan.assumes)))
        for digest in image.referrers:
            shipped = any(entry.descriptor.digest == digest and entry.name is None for entry in plan.entries)
            if store.has(digest) and not shipped:  # one kept when the lock was made but gone since is not
                raw = store.read_bytes(digest)
                kind = parse_manifest_or_index(raw, what=f"referrer {digest} of {image.name}").media_type
                plan.entries.append(Entry(Descriptor(kind, digest, len(raw)), None,
                                          _carried(store, image.name, digest, [], held, plan.assumes)))
    return plan


def _descriptor(store: BlobStore, digest: Digest, media_type: str) -> Descriptor:
    return Descriptor(media_type, digest, store.size(digest))


def _carried(store: BlobStore, name: str, root: Digest, locked: list[Digest], held: dict[Digest, int],
             assumes: dict[Digest, int]) -> list[Digest]:
    """The blobs ``root`` needs that the bundle carries: every manifest and index (an index's
    locked platforms only), and each config and layer that ``held`` does not list (those go into
    ``assumes``)."""
    carried: list[Digest] = []
    pending = [root]
    while pending:
        digest = pending.pop()
        try:
            children = children_of(store.read_bytes(digest), what=f"manifest {digest} of {name}")
        except BlobNotFound:
            raise DeliveryError(f"{name}: manifest {digest} is not in the cache; "
                                "run `layerhoard warm --locked` first") from None
        except InvalidManifest as error:
            raise DeliveryError(f"{name}: {error}") from None
        if children.is_index:
            pending += [child for child in children.digests if child in locked]
        else:
            for leaf in children.digests:
                if leaf in held:
                    assumes[leaf] = held[leaf]
                elif not store.has(leaf):
                    raise DeliveryError(f"{name}: blob {leaf} is not in the cache; run `layerhoard warm --locked`")
                else:
                    carried.append(leaf)
        carried.append(digest)
    return carried


def write_bundle(store: BlobStore, plan: BundlePlan, destination: str,
                 progress: ProgressFactory = no_progress) -> BundleReport:
    """Write ``plan`` to ``destination`` (see the module docstring for the forms it takes)."""
    started = time.monotonic()
    report = BundleReport(destination, images=sum(1 for e in plan.entries if e.name is not None),
                          blobs_assumed=len(plan.assumes), bytes_assumed=sum(plan.assumes.values()))
    blobs = plan.blobs()
    bar = progress("bundle", sum(store.size(d) for d in blobs))
    try:
        if destination.startswith("oci:"):
            report.bytes_written = _write_folder(store, plan, Path(destination[4:]), bar.update)
        elif destination == "-" or destination.startswith("oci-archive:"):
            path = "-" if destination == "-" else destination[len("oci-archive:"):]
            with output_stream(path) as out:
                report.bytes_written = _write_tar(store, plan, out, bar.update)
        else:
            raise DeliveryError(f"unsupported bundle destination {destination!r}: "
                                "use oci:DIR, oci-archive:FILE or - (stdout)")
    except BlobNotFound as error:
        raise DeliveryError(f"a blob of the bundle was evicted from the cache while it was written; "
                            f"warm again ({error})") from None
    finally:
        bar.close()
    report.blobs_written = len(blobs)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _write_folder(store: BlobStore, plan: BundlePlan, root: Path, update: Callable[[int], None]) -> int:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DeliveryError(f"bundle destination {root} exists and is not an empty folder; "
                            "a bundle goes into a new one")
    for entry in plan.entries:
        write_layout(store, entry.blobs, entry.descriptor, root, entry.name)
        update(sum(store.size(d) for d in entry.blobs))
    write_atomic(root / BUNDLE_FILE, plan.record())
    files = [root / "oci-layout", root / "index.json", root / BUNDLE_FILE]
    return sum(f.stat().st_size for f in files) + sum(store.size(d) for d in plan.blobs())


def _write_tar(store: BlobStore, plan: BundlePlan, out: BinaryIO, update: Callable[[int], None]) -> int:
    """The bundle as one tar: its own file and index.json first, then the blobs."""
    writer = TarWriter(out)
    writer.add_bytes("oci-layout", json.dumps(LAYOUT_VERSION).encode())
    writer.add_bytes(BUNDLE_FILE, plan.record())
    writer.add_bytes("index.json", plan.index_json())
    for digest in plan.blobs():
        update(writer.add_blob(store, digest, f"blobs/sha256/{digest.hex}"))
    writer.close()
    return writer.written
