"""Export to an OCI image layout (``oci:DIR[:TAG]``) at the cost of a few hard links.

Blobs are hard-linked from the store when DIR is on the same file system, copied otherwise (into a
temporary name, fsynced, renamed, so a reader never sees half a blob). Store blobs are read-only,
so a consumer cannot change one through its link by accident. Several images share one layout;
index.json is replaced atomically under an flock on DIR itself (a lock file would pollute the
layout), and an export that changes nothing rewrites nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.errors import LayerhoardError
from cache.formats.index_json import REF_NAME, encode_document, encode_line, ref_name_of
from cache.model.digest import Digest
from cache.model.manifests import OCI_INDEX, Descriptor
from cache.store.attachments import attachments
from cache.store.blobstore import LAYOUT_VERSION, BlobStore
from cache.store.folder import Folder
from cache.store.fsutil import replacing, write_atomic
from cache.store.images import blobs_of


@dataclass
class LayoutResult:
    linked: int = 0
    copied: int = 0
    present: int = 0
    copied_bytes: int = 0
    index_changed: bool = False

    def __iadd__(self, other: LayoutResult) -> LayoutResult:
        self.linked += other.linked
        self.copied += other.copied
        self.present += other.present
        self.copied_bytes += other.copied_bytes
        self.index_changed = self.index_changed or other.index_changed
        return self


def write_layout(
    store: BlobStore, blobs: list[Digest], manifest: Descriptor, directory: Path, ref_name: str | None
) -> LayoutResult:
    """Put ``blobs`` (config, layers, manifest) into the layout at ``directory`` and name ``manifest``
    (``ref_name`` None: list it in index.json unnamed, as a delivery bundle lists referrers)."""
    blob_dir = directory / "blobs" / "sha256"
    try:
        blob_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LayerhoardError(f"cannot create OCI layout {directory}: {error.strerror}") from error
    layout_file = directory / "oci-layout"
    if not layout_file.exists():
        write_atomic(layout_file, json.dumps(LAYOUT_VERSION).encode())
    result = LayoutResult()
    folder = Folder.at(blob_dir, make=False)
    try:
        for digest in dict.fromkeys(blobs):  # config and layers may repeat: place each once
            _place_blob(store, digest, folder, result)
        folder.fsync()
    finally:
        folder.close()
    with _directory_lock(directory):
        result.index_changed = _name_in_index(directory / "index.json", manifest, ref_name)
    return result


def write_attachments(store: BlobStore, exported: list[Digest], directory: Path) -> LayoutResult:
    """Put what travels with the manifests ``exported`` (as they are stored: a transcoded manifest
    has no referrers) into the layout: each referrer's blobs and manifest, listed unnamed in
    index.json (image-layout 1.1 keeps referrers as content, reached through their ``subject``),
    and each cosign-tag manifest named by its tag (``sha256-<hex>.sig``), as a registry holds it."""
    result = LayoutResult()
    for attached in attachments(store, exported):
        blobs = list(blobs_of(store, attached.digest))
        if all(store.has(digest) for digest in blobs):  # an index referrer whose manifests were never pulled: left out
            entry = Descriptor(attached.manifest.media_type, attached.digest, len(attached.manifest.raw))
            result += write_layout(store, blobs, entry, directory, attached.cosign_tag)
    return result


def _place_blob(store: BlobStore, digest: Digest, folder: Folder, result: LayoutResult) -> None:
    """Hard-link the blob (the file we opened, never a name: a link planted in the cache is not
    followed) into the layout, or copy it where a link cannot be made."""
    with store.open(digest) as source:
        size = os.fstat(source.fileno()).st_size
        existing = folder.lstat(digest.hex)
        if existing is not None:
            if stat.S_ISREG(existing.st_mode) and existing.st_size == size:
                result.present += 1
                return
            folder.remove(digest.hex)  # a wrong size is an earlier copy's damage: replace it
        try:
            folder.link(source.fileno(), digest.hex)  # atomic: the name appears complete or not at all
            result.linked += 1
            return
        except FileExistsError:
            result.present += 1  # a concurrent export placed it
            return
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
        with replacing(folder.path / digest.hex, 0o444) as copy:
            shutil.copyfileobj(source, copy, 4 << 20)
    result.copied += 1
    result.copied_bytes += size


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _name_in_index(path: Path, manifest: Descriptor, ref_name: str | None) -> bool:
    """Point ``ref_name`` at ``manifest`` in index.json; False when it already did."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    except ValueError as error:
        raise LayerhoardError(f"{path} is not valid JSON ({error}); not touching that layout") from None
    entries = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise LayerhoardError(f"{path} has no manifests list; not touching that layout")
    entry = manifest.to_json()
    if ref_name is not None:
        entry["annotations"] = {**manifest.annotations, REF_NAME: ref_name}
        others = [e for e in entries if not (isinstance(e, dict) and ref_name_of(e) == ref_name)]
        if len(others) == len(entries) - 1 and entry in entries:
            return False
    elif entry in entries:
        return False
    else:
        others = entries
    extra = {key: value for key, value in document.items() if key != "manifests"}  # kept as they were
    write_atomic(path, encode_document([encode_line(e) for e in [*others, entry]], extra))
    return True
