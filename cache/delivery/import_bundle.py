"""``layerhoard import oci:DIR|oci-archive:FILE``: every image of a delivery bundle into the cache.

Each image is rebuilt from the bundle plus what the cache already holds: a blob the bundle carries
is stored (its digest, size and, for a layer, diff_id checked while it streams, as for any pull);
a blob it left out must be in the cache already. The import goes in three steps, so that a
refusal stores nothing and a failure names nothing:

1. check: every blob the bundle assumes (``layerhoard-bundle.json``) is in the cache with its size,
   and every config and layer of every image is either carried or stored. Any gap is one line,
   before a byte is written.
2. store: the carried blobs, then each manifest, then each index (a manifest is stored only once
   its blobs are). A bad blob stops the import here; blobs already published stay unreferenced
   until gc takes them, as after any interrupted pull (design.md, invariant 2).
3. name: every image in index.json at once, once all of them are stored.

What it trusts: nothing in the bundle. Manifests are hashed before they are parsed; index.json's
descriptors and the bundle file's digests pass the strict digest pattern; a tar's members must be
exactly the layout's names (``oci-layout``, ``index.json``, ``layerhoard-bundle.json``,
``blobs/sha256/<64 hex>`` and their folders), regular files, each once: anything else (``..``, an
absolute path, a link) refuses the whole bundle. Blobs of a tar are read in place with ``pread``
(the tar is never unpacked); a folder's blobs are opened without following links.
"""

from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache.delivery.bundle import BUNDLE_FILE, BUNDLE_VERSION
from cache.delivery.lock import Referrer, lock_from_json
from cache.errors import BlobNotFound, DeliveryError, InvalidDigest, InvalidManifest, LayerhoardError
from cache.formats.index_json import REF_NAME, parse_entries
from cache.formats.tar import TarError, TarHeaders
from cache.ingest.blobs import BlobPuller
from cache.model.digest import Digest, parse_digest, sha256_of
from cache.model.manifests import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_manifest_or_index,
    subject_of,
)
from cache.model.refs import ImageRef
from cache.progress import ProgressFactory, no_progress
from cache.store.blobstore import BlobStore
from cache.store.folder import Folder, UnsafeFile
from cache.store.graph import link_cosign, link_referrer
from cache.store.images import record_image

READ_CHUNK = 1 << 20
MAX_RECORD_BYTES = 256 << 20  # the bundle file lists at most as much as an inventory
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_FOLDERS = frozenset({"blobs", "blobs/sha256"})
_FILES = frozenset({"oci-layout", "index.json", BUNDLE_FILE})


class Bundle(ABC):
    """A bundle to read: its small files by name, its blobs by digest (fd, offset, size)."""

    def __init__(self, label: str) -> None:
        self.label = label

    @abstractmethod
    def file(self, name: str, limit: int) -> bytes | None:
        """A small file of the layout's root (oci-layout, index.json, the bundle record), or None."""

    @abstractmethod
    def locate(self, digest: Digest) -> tuple[int, int, int, bool] | None:
        """(fd, offset, size, close after) of a carried blob, or None."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the bundle's files."""

    def size(self, digest: Digest) -> int | None:
        found = self.locate(digest)
        if found is None:
            return None
        if found[3]:
            os.close(found[0])
        return found[2]

    def read(self, digest: Digest, size: int, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small carried blob, read whole and checked against its digest and size."""
        found = self.locate(digest)
        if found is None:
            raise BlobNotFound(f"{self.label}: blob {digest} is not in the bundle")
        fd, offset, length, close = found
        try:
            if length != size or length > limit:
                raise DeliveryError(f"{self.label}: blob {digest} is {length} bytes, its descriptor says {size}")
            data = os.pread(fd, length, offset)
        finally:
            if close:
                os.close(fd)
        if len(data) != length or sha256_of(data) != digest:
            raise DeliveryError(f"{self.label}: blob {digest} does not match its digest; the bundle is damaged")
        return data

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              _restart: Callable[[], None]) -> int:
        """BlobPuller's fetch: the blob's bytes from ``offset`` (the puller checks them)."""
        found = self.locate(descriptor.digest)
        if found is None:
            raise BlobNotFound(f"{self.label}: blob {descriptor.digest} is not in the bundle")
        fd, start, length, close = found
        try:
            sent = offset
            while sent < length:
                chunk = os.pread(fd, min(READ_CHUNK, length - sent), start + sent)
                if not chunk:
                    raise DeliveryError(f"{self.label}: blob {descriptor.digest} is cut off at byte {sent}")
                on_chunk(chunk)
                sent += len(chunk)
            return sent - offset
        finally:
            if close:
                os.close(fd)


class FolderBundle(Bundle):
    """``oci:DIR``: files reached through the folder's descriptor, links refused."""

    def __init__(self, root: Path) -> None:
        super().__init__(f"oci:{root}")
        try:
            self.root = Folder.at(root, make=False)
        except OSError as error:
            raise DeliveryError(f"cannot open bundle {root}: {error.strerror}") from None
        try:
            self.blobs: Folder | None = self.root.child("blobs", "sha256", make=False)
        except FileNotFoundError:
            self.blobs = None
        except OSError as error:
            raise DeliveryError(f"{self.label}: blobs/sha256 cannot be opened ({error.strerror})") from None

    def file(self, name: str, limit: int) -> bytes | None:
        try:
            fd, info = self.root.open_stat(name)
        except FileNotFoundError:
            return None
        except UnsafeFile as error:
            raise DeliveryError(f"{self.label}: {error}") from None
        with os.fdopen(fd, "rb") as handle:
            if info.st_size > limit:
                raise DeliveryError(f"{self.label}: {name} is more than {limit} bytes")
            return handle.read(limit + 1)

    def locate(self, digest: Digest) -> tuple[int, int, int, bool] | None:
        if self.blobs is None:
            return None
        try:
            fd, info = self.blobs.open_stat(digest.hex)
        except FileNotFoundError:
            return None
        except UnsafeFile as error:
            raise DeliveryError(f"{self.label}: {error}") from None
        return fd, 0, info.st_size, True

    def close(self) -> None:
        self.root.close()
        if self.blobs is not None:
            self.blobs.close()


class ArchiveBundle(Bundle):
    """``oci-archive:FILE``: the tar's headers read once, every member checked; data read in place."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"oci-archive:{path}")
        try:
            self.handle = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as error:
            raise DeliveryError(f"cannot open bundle {path}: {error.strerror}") from None
        try:
            self.members = self._scan()
        except BaseException:
            self.handle.close()
            raise

    def _scan(self) -> dict[str, tuple[int, int]]:
        members: dict[str, tuple[int, int]] = {}
        try:
            headers = TarHeaders(self.handle)
            for member in headers:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name.rstrip("/") in _FOLDERS and member.isdir():
                    continue
                if not (name in _FILES or _BLOB_MEMBER.fullmatch(name)) or not member.isfile():
                    kind = "link" if member.islnk() or member.issym() else "member"
                    raise DeliveryError(f"{self.label}: tar {kind} {member.name[:200]!r} is not a file of an OCI "
                                        "image layout; refusing the bundle")
                if name in members:
                    raise DeliveryError(f"{self.label}: tar member {name!r} appears twice; refusing the bundle")
                members[name] = (headers.offset, member.size)
        except TarError as error:
            raise DeliveryError(f"{self.label} is not a readable tar: {error}") from None
        return members

    def file(self, name: str, limit: int) -> bytes | None:
        found = self.members.get(name)
        if found is None:
            return None
        if found[1] > limit:
            raise DeliveryError(f"{self.label}: {name} is more than {limit} bytes")
        return os.pread(self.handle.fileno(), found[1], found[0])

    def locate(self, digest: Digest) -> tuple[int, int, int, bool] | None:
        found = self.members.get(f"blobs/sha256/{digest.hex}")
        return None if found is None else (self.handle.fileno(), found[0], found[1], False)

    def close(self) -> None:
        self.handle.close()


def open_bundle(source: str) -> Bundle:
    if source.startswith("oci:"):
        return FolderBundle(Path(source[4:]))
    if source.startswith("oci-archive:"):
        return ArchiveBundle(Path(source[len("oci-archive:"):]))
    raise DeliveryError(f"unsupported bundle {source!r}: use oci:DIR or oci-archive:FILE")


@dataclass
class ImportReport:
    source: str
    images: dict[str, str] = field(default_factory=dict)  # name → digest
    referrers: int = 0  # referrers and cosign-tag manifests linked to their subjects
    blobs_imported: int = 0  # configs and layers stored from the bundle
    bytes_imported: int = 0
    blobs_reused: int = 0  # configs and layers the cache held already
    assumed: int = 0  # blobs the bundle left out, found in the cache
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    named: list[tuple[str, Manifest | Index]] = field(default_factory=list)
    attached: list[tuple[Manifest, Referrer]] = field(default_factory=list)  # what travels with the images
    manifests: dict[Digest, Manifest] = field(default_factory=dict)  # every image manifest, each once


def import_bundle(store: BlobStore, source: str, *, jobs: int = 4,
                  progress: ProgressFactory = no_progress) -> ImportReport:
    """Bring every image of the bundle ``source`` into ``store`` (see the module docstring)."""
    started = time.monotonic()
    bundle = open_bundle(source)
    try:
        report = ImportReport(source)
        record = _read_record(bundle)
        report.assumed = _check_assumptions(store, bundle, record)
        plan = _plan(store, bundle, _attached(bundle, record))
        _check_complete(store, bundle, plan, report)
        _store(store, bundle, plan, report, jobs, progress)
    finally:
        bundle.close()
    _name(store, plan, source, report)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _read_record(bundle: Bundle) -> dict[str, Any]:
    """The bundle's record (what it assumes, the lock it was made from); a plain OCI layout has
    none and assumes nothing."""
    raw = bundle.file(BUNDLE_FILE, MAX_RECORD_BYTES)
    if raw is None:
        return {"assumes": {}, "lock": None}
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise DeliveryError(f"{bundle.label}: {BUNDLE_FILE} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("bundleVersion") != BUNDLE_VERSION \
            or not isinstance(document.get("assumes"), dict):
        raise DeliveryError(f"{bundle.label}: {BUNDLE_FILE} is not a layerhoard bundle record "
                            f"(bundleVersion {BUNDLE_VERSION} with an assumes object expected)")
    return document


def _attached(bundle: Bundle, record: dict[str, Any]) -> dict[Digest, Referrer]:
    """What the record's lock says each attached manifest is (a referrer, or a cosign tag's)."""
    if record.get("lock") is None:
        return {}
    lock = lock_from_json(record["lock"], f"{bundle.label}: {BUNDLE_FILE}")
    return {digest: note for image in lock.images.values() for digest, note in image.referrers.items()}


def _check_assumptions(store: BlobStore, bundle: Bundle, record: dict[str, Any]) -> int:
    assumes = record["assumes"]
    for text, size in assumes.items():
        try:
            digest = parse_digest(text)
        except InvalidDigest as error:
            raise DeliveryError(f"{bundle.label}: {BUNDLE_FILE}: {error}") from None
        try:
            held = store.size(digest)
        except BlobNotFound:
            held = None
        if held != size:
            raise DeliveryError(
                f"refusing {bundle.label}: it assumes this cache holds blob {digest} ({size} bytes, "
                f"left out against {record.get('excludedFrom')}), which the cache "
                + ("lacks" if held is None else f"holds with {held} bytes")
                + "; import the delivery that brought it first; nothing was imported")
    return len(assumes)


def _manifest(store: BlobStore, bundle: Bundle, descriptor: Descriptor, what: str) -> Manifest | Index:
    """A manifest or index from the bundle (hashed first), else from the cache."""
    if bundle.size(descriptor.digest) is not None:
        raw = bundle.read(descriptor.digest, descriptor.size)
    else:
        try:
            raw = store.read_bytes(descriptor.digest)
        except BlobNotFound:
            raise DeliveryError(f"refusing {bundle.label}: {what} {descriptor.digest} is neither in the bundle "
                                "nor in the cache; nothing was imported") from None
    try:
        return parse_manifest_or_index(raw, descriptor.media_type, f"{what} {descriptor.digest}")
    except InvalidManifest as error:
        raise DeliveryError(f"{bundle.label}: {error}") from None


def _plan(store: BlobStore, bundle: Bundle, attached: dict[Digest, Referrer]) -> _Plan:
    raw = bundle.file("index.json", MAX_MANIFEST_BYTES)
    if raw is None or bundle.file("oci-layout", 4096) is None:
        raise DeliveryError(f"{bundle.label} is not an OCI image layout (no index.json or oci-layout)")
    plan = _Plan()
    try:
        entries = [Descriptor.from_json(entry, f"{bundle.label} index.json") for entry in
                   parse_entries(raw, f"{bundle.label} index.json")]
    except LayerhoardError as error:
        raise DeliveryError(str(error)) from None
    for entry in entries:
        name = entry.annotations.get(REF_NAME)
        cache_name = _cache_name(bundle, name) if name is not None else None
        what = f"image {name}" if name else "referrer"
        top = _manifest(store, bundle, entry, what)
        if cache_name is not None:
            plan.named.append((cache_name, top))
        elif isinstance(top, Manifest) and (note := _what_is_attached(top, attached)) is not None:
            plan.attached.append((top, note))
        else:
            continue  # neither named nor attached to an image: nothing would keep it
        children = [top] if isinstance(top, Manifest) else \
            [_manifest(store, bundle, child, f"platform manifest of {what}") for child in top.manifests
             if bundle.size(child.digest) is not None or store.has(child.digest)]
        if not children:
            raise DeliveryError(f"refusing {bundle.label}: {what} has no platform manifest in the bundle "
                                "or the cache; nothing was imported")
        for child in children:
            if not isinstance(child, Manifest):
                raise DeliveryError(f"{bundle.label}: {what}: nested indexes are not supported")
            plan.manifests[child.digest] = child
    return plan


def _what_is_attached(manifest: Manifest, attached: dict[Digest, Referrer]) -> Referrer | None:
    """An unnamed manifest's edge: a cosign tag's as the record says (the tag is all that ties it
    to its subject), else a referrer's from its own ``subject`` (never from the record's word)."""
    note = attached.get(manifest.digest)
    if note is not None and note.via.startswith("cosign:"):
        return note
    subject = subject_of(manifest.raw)
    return None if subject is None else Referrer(subject[0], subject[1])


def _cache_name(bundle: Bundle, name: str) -> str:
    """The name an image of index.json gets here: a full image reference (a bundle names each image
    as the cache it came from did), normalised as every name of the cache is."""
    try:
        if "/" not in name:
            raise DeliveryError("not a full reference (REGISTRY/REPO:TAG); import a bare tag with "
                                f"`layerhoard pull oci:DIR:{name[:100]} --name REGISTRY/REPO:TAG`")
        return str(ImageRef.parse(name))
    except LayerhoardError as error:
        raise DeliveryError(f"{bundle.label}: index.json names an image {name[:200]!r}: {error}") from None


def _check_complete(store: BlobStore, bundle: Bundle, plan: _Plan, report: ImportReport) -> None:
    """Every config and layer is cached or carried (counted in ``report`` as reused or imported)."""
    seen: set[Digest] = set()
    for manifest in plan.manifests.values():
        for blob in (manifest.config, *manifest.layers):
            if blob.digest in seen:
                continue
            seen.add(blob.digest)
            if store.has(blob.digest):
                report.blobs_reused += 1
                continue
            carried = bundle.size(blob.digest)
            if carried is None:
                raise DeliveryError(f"refusing {bundle.label}: blob {blob.digest} of manifest {manifest.digest} "
                                    "is neither in the bundle nor in the cache; nothing was imported")
            if carried != blob.size:
                raise DeliveryError(f"refusing {bundle.label}: blob {blob.digest} is {carried} bytes, "
                                    f"manifest {manifest.digest} says {blob.size}; nothing was imported")
            report.blobs_imported += 1
            report.bytes_imported += carried


def _store(store: BlobStore, bundle: Bundle, plan: _Plan, report: ImportReport, jobs: int,
           progress: ProgressFactory) -> None:
    puller = BlobPuller(store, bundle.fetch, bundle.label, jobs=jobs, progress=progress)
    for manifest in plan.manifests.values():
        puller.pull_manifest(manifest)
        store.put_bytes(manifest.raw, manifest.media_type, bundle.label)
    for _, top in plan.named:
        store.put_bytes(top.raw, top.media_type, bundle.label)
    for manifest, note in plan.attached:
        if note.via.startswith("cosign:"):
            link_cosign(store, note.subject, manifest.digest, note.via[len("cosign:"):])
        else:
            link_referrer(store, note.subject, manifest.digest, note.artifact_type)
        report.referrers += 1


def _name(store: BlobStore, plan: _Plan, source: str, report: ImportReport) -> None:
    """Every image named in one write of index.json, once all of them are stored."""
    with store.deferred_names() as names:
        for name, top in plan.named:
            platform = _config_platform(store, top) if isinstance(top, Manifest) else None
            record_image(store, name, top, platform=platform, source=source)
            report.images[name] = str(top.digest)
    if names.failed:
        ref, why = next(iter(names.failed.items()))
        raise DeliveryError(f"{len(names.failed)} image(s) could not be named, first {ref}: {why}")


def _config_platform(store: BlobStore, manifest: Manifest) -> Platform | None:
    if manifest.artifact_type is not None:
        return None
    return parse_config(store.read_bytes(manifest.config.digest), f"config {manifest.config.digest}").platform
