"""Lock files: every image of a build pinned to the digests one resolution of its tags gave.

A tag that moves between two builds (or during one) mixes content from two manifests (zarf #5276).
``warm --lock FILE`` resolves each tag once and writes what it got; ``warm --locked FILE`` pulls
exactly those digests, so it makes no tag request, and a fully cached build makes none at all.

The file is JSON, keys sorted, two-space indent, one image per object and one digest a line, so
that the diff of two lock files reads as the list of images that changed::

    {
      "images": {
        "127.0.0.1:5000/team/app:1": {
          "digest": "sha256:…",                      what the name points at (an index or a manifest)
          "mediaType": "application/vnd.oci.image.index.v1+json",
          "platforms": {"linux/amd64": "sha256:…"},  each stored platform's manifest
          "referrers": {"sha256:…": {"artifactType": "…", "subject": "sha256:…", "via": "referrer"}}
        }
      },
      "lockVersion": 1
    }

JSON rather than YAML: the standard library reads and writes it byte-for-byte the same way every
time, and every tool of the ecosystem speaks it. Only registry images can be locked: a lock is
replayed by pulling ``REPO:TAG@DIGEST``, and a daemon or a tarball cannot be asked for a digest.
Everything read is checked (digests by their strict pattern, names by the reference grammar), so a
malformed lock file is one line of error before any request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.delivery.json_files import read_document
from cache.errors import DeliveryError, InvalidReference, LayerhoardError
from cache.model.digest import Digest, parse_digest
from cache.model.manifests import Platform
from cache.model.refs import ImageRef
from cache.store.attachments import attachments
from cache.store.blobstore import BlobStore
from cache.store.fsutil import write_atomic
from cache.store.graph import COSIGN_SUFFIXES
from cache.store.images import CachedImage, load_image

LOCK_VERSION = 1
MAX_LOCK_BYTES = 64 << 20  # 100,000 images take about 40 MB: past this it is not a lock file


@dataclass(frozen=True)
class Referrer:
    """A manifest that travels with a locked image (cache/store/attachments.py): an OCI 1.1
    referrer (``via`` "referrer") or what cosign's tag of the subject holds (``cosign:<suffix>``)."""

    subject: Digest  # the locked index or platform manifest it describes (or a referrer of it)
    artifact_type: str
    via: str = "referrer"


@dataclass(frozen=True)
class LockedImage:
    name: str  # the registry reference, as the cache names it (registry/repo:tag)
    digest: Digest
    media_type: str
    platforms: dict[str, Digest] = field(default_factory=dict)  # "os/arch[/variant]" → manifest
    referrers: dict[Digest, Referrer] = field(default_factory=dict)

    @property
    def ref(self) -> ImageRef:
        """What a locked pull asks for: the name's repository at the locked digest (no tag request)."""
        named = ImageRef.parse(self.name)
        return ImageRef(named.registry, named.repository, None, self.digest)

    def manifests(self) -> list[Digest]:
        """The locked manifests: the name's target, then each platform's."""
        return list(dict.fromkeys([self.digest, *self.platforms.values()]))

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "mediaType": self.media_type,
            "platforms": {platform: str(digest) for platform, digest in self.platforms.items()},
            "referrers": {str(digest): {"artifactType": note.artifact_type, "subject": str(note.subject),
                                        "via": note.via} for digest, note in self.referrers.items()},
        }


@dataclass(frozen=True)
class LockFile:
    images: dict[str, LockedImage]

    def to_json(self) -> dict[str, Any]:
        return {"images": {name: image.to_json() for name, image in self.images.items()},
                "lockVersion": LOCK_VERSION}

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    def write(self, path: Path) -> None:
        write_atomic(path, self.encode())


def lock_images(store: BlobStore, names: list[str]) -> LockFile:
    """The lock of the stored images ``names`` (as pulls recorded them): the digest each name points
    at, each stored platform's manifest, and the referrers the content graph holds for them."""
    images: dict[str, LockedImage] = {}
    for name in names:
        try:
            ImageRef.parse(name)
        except InvalidReference:
            raise DeliveryError(f"cannot lock {name}: only registry images can be locked "
                                "(a locked build pulls REPO:TAG@DIGEST)") from None
        image = load_image(store, name)
        platforms = _platforms(image)
        top = image.platforms.digest if image.platforms is not None else image.manifest.digest
        media_type = image.platforms.media_type if image.platforms is not None else image.manifest.media_type
        kept = {found.digest: Referrer(found.subject, found.artifact_type, found.via)
                for found in sorted(attachments(store, [top]), key=lambda found: found.digest)}
        images[name] = LockedImage(name, top, media_type, platforms, kept)
    return LockFile(dict(sorted(images.items())))


def _platforms(image: CachedImage) -> dict[str, Digest]:
    """Each stored platform's manifest. An index's entries for no platform (buildx keeps its
    attestations under ``unknown/unknown``, one per platform) are not images and are left out: a
    locked pull takes each platform alone, and the index is named once those are stored."""
    if image.platforms is None:
        platform = image.config.platform
        return {str(platform) if platform else "unknown": image.manifest.digest}
    platforms: dict[str, Digest] = {}
    for entry in image.stored_platforms():
        if entry.platform is None or entry.platform.os == "unknown":
            continue
        if str(entry.platform) in platforms:
            raise DeliveryError(f"cannot lock {image.ref}: its index lists two manifests for {entry.platform}")
        platforms[str(entry.platform)] = entry.digest
    return platforms


def read_lock(path: Path) -> LockFile:
    """A lock file, every field checked; a bad one is one line naming the file and the field."""
    return lock_from_json(read_document(path, "lock file", MAX_LOCK_BYTES), f"lock file {path}")


def lock_from_json(document: Any, where: str) -> LockFile:
    """The lock in a parsed document (a lock file, or the record of a delivery bundle)."""
    if not isinstance(document, dict) or document.get("lockVersion") != LOCK_VERSION:
        raise DeliveryError(f"{where} is not a layerhoard lock file (lockVersion {LOCK_VERSION} expected)")
    entries = document.get("images")
    if not isinstance(entries, dict):
        raise DeliveryError(f"{where}: 'images' must be an object of name → image")
    return LockFile({name: _locked(where, name, entry) for name, entry in sorted(entries.items())})


def _locked(document: str, name: str, entry: Any) -> LockedImage:
    where = f"{document}, image {name}"
    try:
        ImageRef.parse(name)
    except InvalidReference as error:
        raise DeliveryError(f"{where}: {error}") from None
    if not isinstance(entry, dict):
        raise DeliveryError(f"{where}: not an object")
    media_type = entry.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise DeliveryError(f"{where}: no mediaType")
    platforms, notes = entry.get("platforms", {}), entry.get("referrers", {})
    if not isinstance(platforms, dict) or not isinstance(notes, dict):
        raise DeliveryError(f"{where}: 'platforms' and 'referrers' must be objects")
    try:
        for platform in platforms:
            if platform != "unknown":
                Platform.parse(platform)
        return LockedImage(
            name, parse_digest(entry.get("digest", "")), media_type,
            {platform: parse_digest(digest) for platform, digest in platforms.items()},
            {parse_digest(digest): _referrer(where, note) for digest, note in notes.items()},
        )
    except DeliveryError:
        raise
    except LayerhoardError as error:  # a bad digest or platform, in its own words
        raise DeliveryError(f"{where}: {error}") from None


VIAS = frozenset({"referrer", *(f"cosign:{suffix}" for suffix in COSIGN_SUFFIXES)})


def _referrer(where: str, note: Any) -> Referrer:
    if not isinstance(note, dict) or not isinstance(note.get("artifactType", ""), str) \
            or note.get("via", "referrer") not in VIAS:
        raise DeliveryError(f"{where}: a referrer must be an object with subject, artifactType and via "
                            f"(one of {', '.join(sorted(VIAS))})")
    return Referrer(parse_digest(note.get("subject", "")), note.get("artifactType", ""), note.get("via", "referrer"))

