"""The OCI 1.1 referrers API and its tag forms, answered from the content graph.

- ``GET /v2/<name>/referrers/<digest>``: an index of the manifests whose ``subject`` is the digest;
- ``GET /v2/<name>/manifests/sha256-<hex>``: the same index under the referrers tag schema, for
  clients that look there (what a registry without the API keeps; generated here, never stored);
- ``GET /v2/<name>/manifests/sha256-<hex>.sig`` (``.att``, ``.sbom``): the manifest cosign's tag
  held where it was fetched, as it was.

A manifest pushed with a ``subject``, or fetched as a referrer, is linked to it
(cache.store.graph), so an answer is one index read for the edges and one small read per referrer
(cache.store.attachments). A subject with no referrers, or one never stored, gets an empty index
from the API: the spec allows referrers to arrive before their subject; its tag-schema tag is
unknown, as on a registry. The edges are the cache's, not a repository's: the store has one
namespace for content, so every repository name answers the same list for a digest.
"""

from __future__ import annotations

import json
import re

from cache.model.digest import Digest, sha256_of
from cache.model.manifests import OCI_INDEX
from cache.server.content import ManifestBody
from cache.store.attachments import attached_to
from cache.store.blobstore import BlobStore

_ATTACHMENT_TAG = re.compile(r"sha256-([0-9a-f]{64})(?:\.(sig|att|sbom))?")


def referrers_index(store: BlobStore, subject: Digest, artifact_type: str | None) -> bytes:
    """The image index of ``subject``'s referrers, only those of ``artifact_type`` when given."""
    manifests = [attached.descriptor() for attached in attached_to(store, subject)
                 if attached.via == "referrer" and artifact_type in (None, attached.artifact_type)]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def attachment_tag(store: BlobStore, tag: str) -> ManifestBody | None:
    """What a tag of the referrers tag schema or of cosign means here; None when it is neither, or
    names nothing stored."""
    match = _ATTACHMENT_TAG.fullmatch(tag)
    if match is None:
        return None
    subject = Digest(match.group(1))
    if match.group(2) is None:
        raw = referrers_index(store, subject, None)
        if not json.loads(raw)["manifests"]:
            return None
        return ManifestBody(raw, OCI_INDEX, sha256_of(raw))
    via = f"cosign:{match.group(2)}"
    for attached in attached_to(store, subject):
        if attached.via == via:
            return ManifestBody(attached.manifest.raw, attached.manifest.media_type, attached.digest)
    return None
