"""The OCI 1.1 referrers API: ``GET /v2/<name>/referrers/<digest>`` answered from the content graph.

A manifest pushed with a ``subject`` is linked to it (cache.store.graph.link_referrer) when it is stored,
so the answer is one index read for the edges and one small read per referrer for its descriptor
(media type, size, artifactType, annotations). A subject with no referrers, or one never stored,
gets an empty index: the spec allows referrers to arrive before their subject. The edges are the
cache's, not a repository's: the store has one namespace for content, so every repository name
answers the same list for a digest.
"""

from __future__ import annotations

import json
from typing import Any

from cache.model.digest import Digest
from cache.model.manifests import OCI_INDEX, subject_of
from cache.server.content import stored_manifest
from cache.store.blobstore import BlobStore
from cache.store.graph import referrers


def referrers_index(store: BlobStore, subject: Digest, artifact_type: str | None) -> bytes:
    """The image index of ``subject``'s referrers, only those of ``artifact_type`` when given."""
    manifests = []
    for digest in sorted(referrers(store, subject)):
        descriptor = _descriptor(store, digest)
        if descriptor is None:
            continue  # deleted or evicted since it was linked: gc drops it, the answer leaves it out
        if artifact_type is not None and descriptor.get("artifactType") != artifact_type:
            continue
        manifests.append(descriptor)
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def _descriptor(store: BlobStore, digest: Digest) -> dict[str, Any] | None:
    """The descriptor of a stored referrer, as the referrers API lists it."""
    body = stored_manifest(store, digest)
    if body is None:
        return None
    descriptor: dict[str, Any] = {"mediaType": body.media_type, "digest": str(digest), "size": len(body.raw)}
    named = subject_of(body.raw)
    if named is not None and named[1]:
        descriptor["artifactType"] = named[1]
    annotations = json.loads(body.raw).get("annotations")
    if isinstance(annotations, dict) and annotations:
        descriptor["annotations"] = annotations
    return descriptor
