"""SBOMs as OCI artifacts beside their image: attached once, then reused instead of a scan.

``sbom --attach`` stores the rendered document as an OCI 1.1 artifact whose ``subject`` is the
image's (platform) manifest: artifactType ``application/spdx+json`` or
``application/vnd.cyclonedx+json``, the empty config, the document as its one layer. It is linked
in the content graph (cache/store/graph.py), so serve lists it in the referrers API, ``export
oci:`` writes it, ``push-cache`` pushes it and gc keeps it as long as the image.

An image that already carries an SBOM of the asked format (attached here earlier, or fetched with
the image from its registry as a referrer or cosign's ``.sbom`` tag) gets that document back: one
index read and one small read, no layer opened. ``--rescan`` scans anyway. What is trusted: the
attached document is whatever the image's publisher (or an earlier attach) stored; its bytes were
checked against their digest when they were stored, nothing more.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from cache.errors import LayerhoardError
from cache.model.digest import Digest
from cache.model.manifests import OCI_MANIFEST, Manifest
from cache.sbom.formats import render
from cache.sbom.generate import ImageSbom, image_sbom
from cache.store.attachments import Attached, attachments
from cache.store.graph import link_referrer
from cache.store.images import CachedImage

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"  # OCI 1.1's config of an artifact with none
ATTACH_SOURCE = "sbom --attach"
# The artifactType an attach writes, and every media type an SBOM of that format is found under
# (cosign attach sbom writes text/spdx+json).
ARTIFACT_TYPES = {"spdx-json": "application/spdx+json", "cyclonedx-json": "application/vnd.cyclonedx+json"}
FOUND_UNDER = {"spdx-json": ("application/spdx+json", "text/spdx+json", "application/vnd.spdx+json"),
               "cyclonedx-json": ("application/vnd.cyclonedx+json",)}


class SbomResult(NamedTuple):
    """An SBOM document; ``sbom`` is the scan's result (None when an attached one was returned),
    ``attached`` the digest of the artifact manifest that holds it (None: not attached)."""

    document: bytes
    sbom: ImageSbom | None
    attached: Digest | None


def image_sbom_document(image: CachedImage, format_name: str, *, attach: bool = False,
                        rescan: bool = False) -> SbomResult:
    """The SBOM of ``image`` in ``format_name``: an attached one when there is (unless
    ``rescan``), else scanned (each layer once, cache/sbom/generate.py) and, with ``attach``,
    stored as an artifact beside the image."""
    if attach and format_name not in ARTIFACT_TYPES:
        raise LayerhoardError(f"--attach stores an SPDX or CycloneDX document, not {format_name}: "
                              f"use --format {' or '.join(ARTIFACT_TYPES)}")
    found = None if rescan else attached_sbom(image, format_name)
    if found is not None:
        return SbomResult(found[1], None, found[0].digest)
    sbom = image_sbom(image)
    document = render(sbom, format_name).encode()
    return SbomResult(document, sbom, attach_sbom(image, document, format_name) if attach else None)


def attached_sbom(image: CachedImage, format_name: str) -> tuple[Attached, bytes] | None:
    """An SBOM of ``format_name`` that travels with the image (its platform manifest's first, then
    its index's), with the document's bytes; None when there is none."""
    kinds = FOUND_UNDER.get(format_name)
    if kinds is None:
        return None
    roots = [image.digest] + ([image.platforms.digest] if image.platforms is not None else [])
    for attached in attachments(image.store, roots, depth=1):
        if attached.subject not in roots or not isinstance(attached.manifest, Manifest):
            continue  # the index's platform manifests: another platform's SBOM
        layers = [blob for blob in attached.manifest.layers if blob.media_type in kinds]
        if attached.artifact_type in kinds and len(attached.manifest.layers) == 1:
            layers = list(attached.manifest.layers)
        if layers:
            return attached, image.store.read_bytes(layers[0].digest)
    return None


def attach_sbom(image: CachedImage, document: bytes, format_name: str) -> Digest:
    """Store ``document`` as an OCI artifact whose subject is the image's manifest; its digest.
    The manifest is serialised the same way every time: one document gives one artifact."""
    store = image.store
    artifact_type = ARTIFACT_TYPES[format_name]
    layer = store.put_bytes(document, artifact_type, ATTACH_SOURCE)
    empty = store.put_bytes(b"{}", EMPTY_CONFIG, ATTACH_SOURCE)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": str(empty), "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": str(layer), "size": len(document)}],
        "subject": image.manifest.descriptor().to_json(),
    }, separators=(",", ":"), sort_keys=True).encode()
    digest = store.put_bytes(manifest, OCI_MANIFEST, ATTACH_SOURCE)  # its blobs first, then it
    link_referrer(store, image.digest, digest, artifact_type)
    return digest
