"""What travels with an image: its referrers and cosign-tag manifests, found in the content graph.

A signature, an SBOM or an attestation is an edge from a manifest (the subject) to another manifest
(cache/store/graph.py): an OCI 1.1 referrer names its subject, a cosign tag ``sha256-<hex>.sig``
only by its tag. This walks those edges from an image's manifests (the index and every stored
platform manifest) and one level further (a signature of an SBOM), for ``inspect``, ``export
oci:``, ``push-cache``, serve's tag schema and ``sbom``'s reuse of an attached document. Cost: one
index read per manifest visited and one small read per attached manifest; no layer is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from cache.errors import BlobNotFound, ImageNotFound, InvalidManifest
from cache.model.digest import Digest
from cache.model.manifests import MAX_MANIFEST_BYTES, Descriptor, Index, Manifest, parse_manifest_or_index
from cache.store.blobstore import BlobStore
from cache.store.graph import cosign_tags, referrers

DEPTH = 2  # an image's referrers, and theirs: what fetching brings (cache/ingest/referrers.py)


class Attached(NamedTuple):
    """One manifest that travels with an image: ``via`` is ``referrer`` (it names ``subject``) or
    ``cosign:<suffix>`` (it is what cosign's tag ``sha256-<hex>.<suffix>`` of ``subject`` holds)."""

    subject: Digest
    manifest: Manifest | Index  # an index may refer too (the referrers API lists it; little else takes one)
    artifact_type: str
    via: str

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def cosign_tag(self) -> str | None:
        """The tag cosign keeps it under; None for an OCI 1.1 referrer."""
        return cosign_tag(self.subject, self.via[7:]) if self.via.startswith("cosign:") else None

    def descriptor(self) -> dict[str, Any]:
        """Its descriptor as the referrers API and the tag schema list it (artifactType, annotations)."""
        out: dict[str, Any] = Descriptor(self.manifest.media_type, self.digest, len(self.manifest.raw)).to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        annotations = json.loads(self.manifest.raw).get("annotations")
        if isinstance(annotations, dict) and annotations:
            out["annotations"] = annotations
        return out

    def to_json(self) -> dict[str, Any]:
        return {"subject": str(self.subject), "digest": str(self.digest), "media_type": self.manifest.media_type,
                "artifact_type": self.artifact_type, "via": self.via, "size": size_of(self.manifest)}


def cosign_tag(subject: Digest, suffix: str) -> str:
    """cosign's tag for ``subject``: ``sha256-<hex>.<suffix>``."""
    return f"sha256-{subject.hex}.{suffix}"


def artifact_kind(manifest: Manifest | Index) -> str:
    """What an attached manifest is: its artifactType, else its config's media type (the rule of
    the referrers API); an index has no config: its artifactType or nothing."""
    if isinstance(manifest, Manifest):
        return manifest.artifact_type or manifest.config.media_type
    declared = json.loads(manifest.raw).get("artifactType")
    return declared if isinstance(declared, str) else ""


def size_of(manifest: Manifest | Index) -> int:
    """A manifest's bytes and those of what it names (an index: its manifests' own bytes)."""
    if isinstance(manifest, Manifest):
        return len(manifest.raw) + manifest.config.size + sum(blob.size for blob in manifest.layers)
    return len(manifest.raw) + sum(entry.size for entry in manifest.manifests)


def stored_manifest(store: BlobStore, digest: Digest) -> Manifest | Index | None:
    """A stored manifest or index; None when absent, evicted, too big or not a manifest."""
    try:
        if store.size(digest) > MAX_MANIFEST_BYTES:
            return None
        return parse_manifest_or_index(store.read_bytes(digest), what=f"manifest {digest}")
    except (BlobNotFound, InvalidManifest):
        return None


def image_manifests(store: BlobStore, root: Digest) -> list[Digest]:
    """The manifests a name stands for: the root, and for an index each stored platform manifest."""
    top = stored_manifest(store, root)
    if not isinstance(top, Index):
        return [root]
    return [root] + [entry.digest for entry in top.manifests if store.has(entry.digest)]


def attached_to(store: BlobStore, subject: Digest) -> Iterator[Attached]:
    """The stored referrers and cosign-tag manifests of one manifest (not theirs)."""
    edges = [(digest, "referrer") for digest in sorted(referrers(store, subject))]
    edges += [(digest, f"cosign:{suffix}") for digest, suffix in sorted(cosign_tags(store, subject).items())]
    for digest, via in edges:
        manifest = stored_manifest(store, digest)
        if manifest is not None:  # deleted or evicted since it was linked: left out
            yield Attached(subject, manifest, artifact_kind(manifest), via)


def attachments(store: BlobStore, roots: Iterable[Digest], depth: int = DEPTH) -> list[Attached]:
    """Everything attached to the images at ``roots`` (manifest or index digests), ``depth`` levels
    deep, each once, subjects before what refers to them."""
    found: list[Attached] = []
    seen: set[Digest] = set()
    level = [digest for root in roots for digest in image_manifests(store, root)]
    for _ in range(depth):
        following = []
        for subject in level:
            for attached in attached_to(store, subject):
                if attached.digest not in seen:
                    seen.add(attached.digest)
                    found.append(attached)
                    following.append(attached.digest)
        level = following
    return found


def image_attachments(store: BlobStore, ref: str) -> dict[str, Any]:
    """What travels with the image named ``ref`` (as ``ls`` lists it), for ``inspect``."""
    entry = store.image_descriptor(ref)
    if entry is None:
        raise ImageNotFound(f"{ref} is not in the cache; `layerhoard ls` lists the names it holds")
    root = Descriptor.from_json(entry, f"index.json entry {ref}").digest
    return {"ref": ref, "digest": str(root), "manifests": [str(d) for d in image_manifests(store, root)],
            "attached": [attached.to_json() for attached in attachments(store, [root])]}
