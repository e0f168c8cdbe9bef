"""Inventories: the digests a target holds, so a delivery can leave them out.

    layerhoard inventory [TARGET] [-o FILE]     TARGET: the cache (default), oci:DIR, docker://REGISTRY/REPO

The document is JSON, sorted, one blob a line::

    {"blobs": {"sha256:…": 1234, …}, "inventoryVersion": 1, "target": "oci:/srv/site"}

What each target costs and what it trusts:

- the cache: one ``lstat`` per published blob, no read. Every blob there was hashed when it was
  stored (design.md invariant 1), so the inventory is as good as the cache.
- ``oci:DIR``: one ``lstat`` per file of ``blobs/sha256``; regular files with a digest's name only.
  Nothing is hashed: the inventory is the layout's claim, and the site checks every assumed blob
  against its own cache when it imports (``cache/delivery/import_bundle.py``).
- ``docker://REGISTRY/REPO``: the registry's claim, read over the Distribution API: the tags list
  (one request per 1,000 tags), one manifest request per tag, one per platform manifest of an
  index not seen yet (by digest). Blob sizes are taken from the manifests; no blob is fetched or
  asked for (a HEAD per blob would cost more requests than the manifests themselves).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache.delivery.json_files import read_document
from cache.errors import DeliveryError, InvalidDigest, InvalidReference, LayerhoardError
from cache.model.digest import Digest, parse_digest, sha256_of
from cache.model.manifests import Index, Manifest, parse_manifest_or_index
from cache.model.refs import ImageRef
from cache.store.blobstore import BlobStore
from cache.store.fsutil import write_atomic

INVENTORY_VERSION = 1
MAX_INVENTORY_BYTES = 256 << 20  # a million blobs take about 90 MB


@dataclass(frozen=True)
class Inventory:
    target: str
    blobs: dict[Digest, int]  # digest → size in bytes

    def to_json(self) -> dict[str, Any]:
        return {"blobs": {str(d): size for d, size in sorted(self.blobs.items())},
                "inventoryVersion": INVENTORY_VERSION, "target": self.target}

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    def write(self, path: Path) -> None:
        write_atomic(path, self.encode())


def inventory_of(store: BlobStore, target: str | None = None, *, insecure: bool = False) -> Inventory:
    """The inventory of ``target``: the cache when None, else ``oci:DIR`` or ``docker://REGISTRY/REPO``."""
    if target is None:
        return _of_cache(store)
    if target.startswith("oci:"):
        return _of_layout(Path(target[4:]))
    if target.startswith("docker://"):
        return _of_registry(target[len("docker://"):], insecure)
    raise DeliveryError(f"unsupported inventory target {target!r}: use oci:DIR or docker://REGISTRY/REPO "
                        "(or nothing, for the cache)")


def exclusion_from(store: BlobStore, text: str, *, insecure: bool = False) -> Inventory:
    """What ``--exclude-from`` names: an inventory file, or a target to take the inventory of now."""
    if text.startswith(("oci:", "docker://")):
        return inventory_of(store, text, insecure=insecure)
    return read_inventory(Path(text))


def read_inventory(path: Path) -> Inventory:
    """An inventory file, every digest and size checked; a bad one is one line naming the file."""
    document = read_document(path, "inventory", MAX_INVENTORY_BYTES)
    if not isinstance(document, dict) or document.get("inventoryVersion") != INVENTORY_VERSION \
            or not isinstance(document.get("blobs"), dict):
        raise DeliveryError(f"{path} is not a layerhoard inventory (inventoryVersion {INVENTORY_VERSION} "
                            "and a blobs object expected)")
    blobs: dict[Digest, int] = {}
    for text, size in document["blobs"].items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DeliveryError(f"inventory {path}: blob {text[:80]!r} has no valid size")
        try:
            blobs[parse_digest(text)] = size
        except InvalidDigest as error:
            raise DeliveryError(f"inventory {path}: {error}") from None
    return Inventory(str(document.get("target", path)), blobs)


def _of_cache(store: BlobStore) -> Inventory:
    blobs: dict[Digest, int] = {}
    for digest in store.digests():
        try:
            blobs[digest] = store.size(digest)
        except LayerhoardError:
            continue  # removed meanwhile (gc), or not a blob we published: not held
    return Inventory(f"cache:{store.root}", blobs)


def _of_layout(root: Path) -> Inventory:
    folder = root / "blobs" / "sha256"
    if not (root / "oci-layout").is_file():
        raise DeliveryError(f"{root} is not an OCI image layout (no oci-layout file)")
    blobs: dict[Digest, int] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        entries = []
    except OSError as error:
        raise DeliveryError(f"cannot list {folder}: {error.strerror}") from None
    for entry in entries:
        try:
            digest = parse_digest(f"sha256:{entry.name}")
            info = entry.stat(follow_symlinks=False)
        except (InvalidDigest, OSError):
            continue  # not a blob of the layout
        if stat.S_ISREG(info.st_mode):
            blobs[digest] = info.st_size
    return Inventory(f"oci:{root}", blobs)


def _of_registry(text: str, insecure: bool) -> Inventory:
    """Every blob the tags of one repository name (see the module docstring for the cost)."""
    from cache.registry.client import RegistryClient  # only this target speaks HTTP

    try:
        ref = ImageRef.parse(text)
    except InvalidReference as error:
        raise DeliveryError(f"inventory of docker://{text}: {error}") from None
    if ref.digest is not None or ":" in text.rsplit("/", 1)[-1]:
        raise DeliveryError(f"inventory of docker://{text}: name a repository (docker://REGISTRY/REPO), "
                            "not a tag or digest: every tag is read")
    blobs: dict[Digest, int] = {}
    client = RegistryClient(ref.registry, insecure=insecure)
    try:
        pending = client.list_tags(ref.repository)
        seen: set[str] = set()
        while pending:
            reference = pending.pop()
            raw, content_type = client.get_manifest(ref.repository, reference)
            digest = sha256_of(raw)
            if reference.startswith("sha256:") and digest != reference:
                raise DeliveryError(f"{ref.name}: manifest {reference} has digest {digest}")
            blobs[digest] = len(raw)
            top = parse_manifest_or_index(raw, content_type, f"manifest {ref.name}:{reference}")
            if isinstance(top, Index):
                for child in top.manifests:
                    if str(child.digest) not in seen and child.digest not in blobs:
                        seen.add(str(child.digest))
                        pending.append(str(child.digest))
            elif isinstance(top, Manifest):
                for blob in (top.config, *top.layers):
                    blobs[blob.digest] = blob.size
    finally:
        client.close()
    return Inventory(f"docker://{ref.name}", blobs)
